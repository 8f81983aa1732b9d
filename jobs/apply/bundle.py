"""A :class:`models.bundle.ModelBundle` from a training checkpoint and its dataset.

.. code-block:: python

    from jobs.apply import bundle_from_checkpoint
    bundle = bundle_from_checkpoint("scans/zll/tune/trial_x/checkpoint_000007")   # or best.pt
    bundle.save("best_model")

The checkpoint (``best.pt``, else ``last.pt``, of jobs/train) gives family, configs and
weights; the dataset manifest it names (``train_config.dataset``) gives feature names, scaler
and bins; unfolding families also get the training split's response matrix (rows with both
bins inside the edges, as the unfolders are trained), which ``hepscan apply`` uses for its
IBU and Tikhonov baselines.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.bundle import ModelBundle, family_kind, manifest_digest
from models.errors import InputError

__all__ = ["bundle_from_checkpoint", "checkpoint_file", "git_sha", "training_response"]

CHECKPOINT_NAMES = ("best.pt", "last.pt")


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a file, else its ``best.pt`` or ``last.pt``."""
    p = Path(path)
    if p.is_file():
        return p
    for name in CHECKPOINT_NAMES:
        if (p / name).is_file():
            return p / name
    if not p.exists():
        raise InputError(f"{p}: checkpoint not found")
    raise InputError(f"{p}: no {' or '.join(CHECKPOINT_NAMES)} in this directory")


def git_sha() -> str | None:
    """The commit of this checkout (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def training_response(manifest: Any, n_bins: int) -> dict[str, Any]:
    """Response counts (reco x truth) and truth counts of the training split (both bins in)."""
    import numpy as np

    from jobs.manifest import load_split
    from models.baselines import response_matrix

    data = load_split(manifest, "train", ["truth_bin", "reco_bin"])
    t = np.asarray(data["truth_bin"], np.int64)
    r = np.asarray(data["reco_bin"], np.int64)
    keep = (t >= 0) & (r >= 0) & (t < n_bins) & (r < n_bins)
    resp = response_matrix(t[keep], r[keep], n_bins)
    return {
        "counts": resp.counts.tolist(),
        "truth": resp.truth.tolist(),
        "rows": int(keep.sum()),
        "split": "train",
    }


def bundle_from_checkpoint(
    path: str | os.PathLike[str],
    *,
    info: Mapping[str, Any] | None = None,
    dataset: str | os.PathLike[str] | None = None,
) -> ModelBundle:
    """Bundle a checkpoint (file or directory) with its dataset's manifest (``dataset``
    overrides the path stored in the checkpoint)."""
    import torch

    from jobs.manifest import load_manifest

    ckpt_path = checkpoint_file(path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"{ckpt_path}: cannot read checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or "train_config" not in ckpt or "model" not in ckpt:
        raise InputError(f"{ckpt_path}: not a hepscan training checkpoint")
    ds = Path(dataset) if dataset is not None else Path(str(ckpt["train_config"]["dataset"]))
    manifest = load_manifest(ds)
    meta: dict[str, Any] = {
        "checkpoint": str(ckpt_path.resolve()),
        "epoch": ckpt.get("epoch"),
        "best_epoch": ckpt.get("best_epoch"),
        "best": ckpt.get("best"),
        "monitor": ckpt["train_config"].get("monitor"),
        "dataset": str(manifest.root.resolve()),
        "dataset_digest": manifest_digest(manifest.raw),
        "git_sha": git_sha(),
    }
    meta.update(info or {})
    bundle = ModelBundle.from_checkpoint(ckpt, manifest.raw, info=meta)
    if family_kind(bundle.spec) == "unfold" and "truth_bin" in manifest.columns:
        bundle.response = training_response(manifest, bundle.n_bins)
    return bundle
