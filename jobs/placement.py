"""Which device a rank trains on: the contract between whoever places ranks and the loop.

Whoever starts a rank may reserve a GPU for it and say so in the environment:

* ``CUDA_VISIBLE_DEVICES``: the GPUs the process may see (under Ray: all GPUs of the trial's
  ranks on that node, so NCCL can use peer-to-peer between them; see
  :func:`scan.resources.gpu_env_plan`);
* ``HEPSCAN_CUDA_DEVICE``: the index, *within the visible devices*, of this rank's own GPU.

:func:`cuda_index` honours ``HEPSCAN_CUDA_DEVICE`` first; without it a process that sees one GPU
uses it, and a standalone multi-process launch (``hepscan train --workers N`` with
``torch.multiprocessing``, ``horovodrun``, ``torchrun``) uses its local rank, which those
launchers set. ``device: cuda:N`` in a TrainConfig always wins.

.. code-block:: python

    from jobs.placement import resolve_device
    resolve_device("auto", os.environ, torch.cuda.is_available(), torch.cuda.device_count())
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from models.errors import ConfigError

__all__ = ["DEVICE_ENV", "LOCAL_RANK_ENVS", "cuda_index", "resolve_device"]

DEVICE_ENV = "HEPSCAN_CUDA_DEVICE"
LOCAL_RANK_ENVS = ("LOCAL_RANK", "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")


def cuda_index(env: Mapping[str, str], device_count: int) -> int:
    """This rank's CUDA device index among ``device_count`` visible ones (module docstring)."""
    if device_count < 1:
        raise ConfigError("device 'cuda': no CUDA device is visible to this process")
    if DEVICE_ENV in env:
        try:
            idx = int(env[DEVICE_ENV])
        except ValueError:
            raise ConfigError(f"{DEVICE_ENV}={env[DEVICE_ENV]!r} is not an integer") from None
        if not 0 <= idx < device_count:
            raise ConfigError(
                f"{DEVICE_ENV}={idx} but this process sees {device_count} CUDA device(s) "
                f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
            )
        return idx
    if device_count == 1:
        return 0
    for key in LOCAL_RANK_ENVS:
        if key in env:
            local = int(env[key])
            if local >= device_count:
                raise ConfigError(
                    f"{key}={local} but this process sees only {device_count} CUDA device(s): "
                    "more ranks than GPUs on this node"
                )
            return local
    return 0


def resolve_device(
    name: str, env: Mapping[str, str], cuda_available: bool, device_count: int
) -> torch.device:
    """The device of ``TrainConfig.device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)."""
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not cuda_available:
        raise ConfigError(f"key 'device' is {name!r} but CUDA is not available here")
    if name == "cuda":
        return torch.device("cuda", cuda_index(env, device_count))
    return torch.device(name)
