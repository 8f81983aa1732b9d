"""GPU requests of a scan's trials: validation, and the GPU each rank sees (pure functions).

Rules (checked when a scan config is loaded, :func:`check_gpu_request`):

* a rank trains on one device: ``gpus_per_worker`` is 0, 1, or, for single-rank trials only, a
  fraction (several trials share a GPU, e.g. 0.25 for four small trials per GPU);
* multi-rank trials (Horovod, DDP) request whole GPUs: ``gpus_per_worker: 1``.

Placement (:func:`rank_gpu_env`, :func:`node_gpu_plan`), from the ids Ray assigned to each rank
(``ray.get_runtime_context().get_accelerator_ids()["GPU"]``), never from a local-rank guess:

* every rank of a trial on a node sees all of that trial's GPUs on the node
  (``CUDA_VISIBLE_DEVICES``, in rank order), so NCCL can use peer-to-peer and NVLink;
* ``HEPSCAN_CUDA_DEVICE`` is the index of the rank's own GPU in that list
  (:mod:`jobs.placement` reads it).

Horovod's ``RayExecutor`` already sets ``CUDA_VISIBLE_DEVICES`` to the node's GPUs of the group;
DDP actors get the same from :func:`node_gpu_plan`.

:func:`slurm.gpus.check_scan_gpus` cross-checks ``hepscan slurm submit --gpus-per-node``.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.placement import DEVICE_ENV
from models.errors import ConfigError

__all__ = ["check_gpu_request", "node_gpu_plan", "rank_gpu_env"]


def check_gpu_request(workers: int, gpus_per_worker: float, where: str = "resources") -> None:
    """Raise :class:`ConfigError` (with the fix) for a GPU request a trial cannot use."""
    g = float(gpus_per_worker)
    if g == 0:
        return
    if g > 1:
        raise ConfigError(
            f"{where}.gpus_per_worker is {g:g}: a rank trains on one GPU; for more GPUs per "
            f"trial raise {where}.workers and set gpus_per_worker: 1"
        )
    if workers > 1 and g != 1:
        raise ConfigError(
            f"{where}.gpus_per_worker is {g:g} with workers: {workers}: data-parallel ranks "
            "(Horovod/NCCL, DDP/NCCL) need a whole GPU each. Use gpus_per_worker: 1, or "
            "workers: 1 to let several single-rank trials share a GPU"
        )


def rank_gpu_env(own_ids: Sequence[str | int], visible: Sequence[str | int]) -> dict[str, str]:
    """The environment of one rank: ``visible`` GPUs, its own (``own_ids``, from Ray) picked.

    No ids: a CPU rank (empty dict). A rank must hold exactly one GPU id."""
    own = [str(i) for i in own_ids]
    vis = [str(i) for i in visible]
    if not own:
        return {}
    if len(own) != 1:
        raise ConfigError(
            f"a rank was assigned GPUs {own}; a rank trains on one GPU "
            "(resources.gpus_per_worker must be 1, or a fraction for single-rank trials)"
        )
    if own[0] not in vis:
        raise ConfigError(f"the rank's GPU {own[0]} is not among the visible GPUs {vis}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(vis), DEVICE_ENV: str(vis.index(own[0]))}


def node_gpu_plan(ranks: Sequence[tuple[str, Sequence[str | int]]]) -> list[dict[str, str]]:
    """Per rank (``(node id, own GPU ids)`` in rank order): the env of :func:`rank_gpu_env`
    with the visible list = the GPUs of all of the trial's ranks on the same node."""
    per_node: dict[str, list[str]] = {}
    for node, ids in ranks:
        lst = per_node.setdefault(node, [])
        lst.extend(str(i) for i in ids if str(i) not in lst)
    return [rank_gpu_env(ids, per_node[node]) for node, ids in ranks]
