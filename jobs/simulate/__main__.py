"""``python -m jobs.simulate SAMPLE [options]``: the ``hepscan simulate`` command without the group."""

import click

from jobs.simulate.cli import simulate_command
from models.errors import HepscanError

if __name__ == "__main__":  # pragma: no cover
    try:
        simulate_command.main(prog_name="python -m jobs.simulate", standalone_mode=True)
    except HepscanError as _exc:
        click.echo(f"hepscan: error: {_exc}", err=True)
        raise SystemExit(2) from None
