"""``python -m jobs.train CONFIG [options]``: the ``hepscan train`` command without the group
(what ``horovodrun -np 2 --gloo python -m jobs.train ...`` starts on every rank)."""

import click

from jobs.train.cli import train_command
from models.errors import HepscanError

if __name__ == "__main__":
    try:
        train_command.main(prog_name="python -m jobs.train", standalone_mode=True)
    except HepscanError as _exc:
        click.echo(f"hepscan: error: {_exc}", err=True)
        raise SystemExit(2) from None
