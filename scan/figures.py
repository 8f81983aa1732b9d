"""PNG plots of one trial, made by the scan driver from the trial's best checkpoint.

* unfolding families (``unfold``): unfolded vs truth and reco on the validation split, ratio panel;
* generative families (``sample``: GAN, flow): generated vs reference reco distributions;
* resolution (``smear``): smeared vs simulated reco distributions of the reconstructed objects.

The driver (not the trial's ranks) makes them so that only one process writes to MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _validation(prep: Any, max_rows: int | None, extra: list[str]) -> dict[str, np.ndarray]:
    from jobs.manifest import load_split

    spec = prep.spec
    cols = list(dict.fromkeys([*spec.x_columns, *spec.y_columns, *extra]))
    cols = [c for c in cols if c in prep.manifest.columns]
    data = load_split(prep.manifest, "validation", cols)
    if max_rows is not None:
        data = {c: v[:max_rows] for c, v in data.items()}
    if spec.drop_negative_y:
        keep = np.ones(len(data[cols[0]]), dtype=bool)
        for c in spec.y_columns:
            keep &= np.asarray(data[c]) >= 0
        data = {c: v[keep] for c, v in data.items()}
    return data


def trial_figures(checkpoint: str | Path) -> dict[str, Any]:
    """``{name: matplotlib Figure}`` for a ``best.pt``/``last.pt`` checkpoint of jobs/train."""
    import torch

    from jobs.train import prepare, train_config_from_dict
    from tracking.plots import plot_generated, plot_unfolded

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tc = dict(ckpt["train_config"])
    tc.pop("checkpoint_dir", None)
    cfg = train_config_from_dict({**tc, "workers": 1, "backend": "single"}, str(checkpoint))
    prep = prepare(cfg)
    spec = prep.spec
    model = prep.family.build(prep.model_config, spec.dims)
    model.load_state_dict(ckpt["model"])
    model.eval()
    stats = {k: tuple(v) for k, v in ckpt.get("standardise", {}).items()}
    figs: dict[str, Any] = {}

    def xmatrix(data: dict[str, np.ndarray], standardised: bool) -> torch.Tensor:
        cols = []
        for c in spec.x_columns:
            v = np.asarray(data[c], dtype=np.float64)
            if standardised and c in stats:
                mean, std = stats[c]
                v = (v - mean) / std
            cols.append(v)
        return torch.as_tensor(np.stack(cols, axis=1), dtype=torch.float32)

    title = f"{cfg.family} (epoch {ckpt.get('epoch')})"
    if hasattr(model, "unfold"):
        data = _validation(prep, cfg.max_rows, ["truth_bin", "reco_bin"])
        edges = np.asarray(prep.manifest.unfold_edges, dtype=np.float64)
        n = len(edges) - 1
        unfolded = model.unfold(xmatrix(data, True)).double().cpu().numpy()

        def hist(col: str) -> np.ndarray:
            v = np.asarray(data.get(col, np.empty(0)), dtype=np.int64)
            return np.bincount(v[(v >= 0) & (v < n)], minlength=n).astype(np.float64)

        figs["unfolded"] = plot_unfolded(
            edges,
            hist("truth_bin"),
            hist("reco_bin"),
            {"NN": unfolded},
            title=title,
            xlabel=str((prep.manifest.unfold or {}).get("quantity") or "observable"),
        )
    elif hasattr(model, "sample"):
        data = _validation(prep, cfg.max_rows, [])
        ref = np.stack([np.asarray(data[c], dtype=np.float64) for c in spec.y_columns], axis=1)
        gen = torch.Generator().manual_seed(0)
        fake = model.sample(xmatrix(data, False), generator=gen).double().cpu().numpy()
        names = [c.removeprefix("reco_") for c in spec.y_columns]
        figs["generated"] = plot_generated(ref, fake, names=names, title=title)
    elif hasattr(model, "smear"):
        names = list(spec.dims.names)
        reco_cols = [f"reco_{q}" for q in names]
        data = _validation(prep, cfg.max_rows, reco_cols)
        if all(c in data for c in reco_cols):
            gen = torch.Generator().manual_seed(0)
            smeared, ok = model.smear(xmatrix(data, False), generator=gen)
            ref = np.stack([np.asarray(data[c], dtype=np.float64) for c in reco_cols], axis=1)
            fake = smeared.double().cpu().numpy()
            okn = ok.cpu().numpy() & np.isfinite(ref).all(axis=1) & np.isfinite(fake).all(axis=1)
            figs["resolution"] = plot_generated(ref[okn], fake[okn], names=names, title=title)
    return figs
