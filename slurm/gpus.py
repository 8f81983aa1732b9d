"""``hepscan slurm submit --gpus-per-node G`` against the GPUs the scan's trials request.

Checked before ``sbatch`` (and in ``--dry-run``): a GPU allocation whose trials request no GPU
would train on CPU while the GPUs idle; a trial that needs more GPUs than a node has, or GPUs on
nodes without any, could never start. Overrides given to the driver (``-- --set
resources.gpus_per_worker=1``) are applied first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.errors import ConfigError

__all__ = ["check_scan_gpus", "scan_resources"]


def scan_resources(config: Path, driver_args: Sequence[str] = ()) -> tuple[int, float]:
    """(workers, gpus_per_worker) of a scan config, with the driver's ``--set`` overrides."""
    import yaml
    from pydantic import ValidationError

    from scan.config import Resources, parse_override, set_path

    try:
        raw: Any = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{config}: cannot read the scan config ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config}: expected a mapping at the top level")
    args = list(driver_args)
    for i, a in enumerate(args):
        text = args[i + 1] if a == "--set" and i + 1 < len(args) else None
        if a.startswith("--set="):
            text = a.split("=", 1)[1]
        if text is not None:
            key, value = parse_override(text)
            set_path(raw, key, value)
    try:
        res = Resources(**(raw.get("resources") or {}))
    except ValidationError as exc:
        raise ConfigError(f"{config}: resources: {exc.errors()[0]['msg']}") from None
    return res.workers, res.gpus_per_worker


def check_scan_gpus(config: str, workers: int, gpus_per_worker: float, gpus_per_node: int) -> None:
    """Raise :class:`ConfigError`, with the fix, when the allocation and the trials disagree."""
    per_trial = workers * gpus_per_worker
    if gpus_per_node > 0 and gpus_per_worker == 0:
        raise ConfigError(
            f"--gpus-per-node {gpus_per_node} but the scan {config} requests no GPUs "
            "(resources.gpus_per_worker is 0): its trials would train on CPU and leave the GPUs "
            "idle. Set 'resources: {workers: N, gpus_per_worker: 1}' in the config (see "
            "configs/unfold_zll_gpu.yaml), or drop --gpus-per-node"
        )
    if gpus_per_node == 0 and gpus_per_worker > 0:
        raise ConfigError(
            f"the scan {config} requests {per_trial:g} GPU(s) per trial but --gpus-per-node "
            "is 0: no trial could start. Pass --gpus-per-node (e.g. 4), or set "
            "resources.gpus_per_worker: 0 to train on CPU"
        )
    if per_trial > gpus_per_node > 0:
        raise ConfigError(
            f"the scan {config} requests {per_trial:g} GPUs per trial (workers: {workers} x "
            f"gpus_per_worker: {gpus_per_worker:g}) but a node has --gpus-per-node "
            f"{gpus_per_node}: lower resources.workers to at most "
            f"{int(gpus_per_node // gpus_per_worker)}, or request nodes with more GPUs"
        )
