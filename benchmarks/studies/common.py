"""Shared pieces of the studies: simulated data, a small training loop over the family API,
the unfolding comparison (ML vs inversion, IBU, Tikhonov), tables and plots.

Models are trained through the registry's family contract (``data_spec`` → ``build`` →
``configure_optimizers`` / ``training_step`` / ``evaluate``) with an in-memory loop rather than
``jobs.train.train``: k-fold cross-validation needs a fresh split per fold, which the shard
layout (one hashed train/validation/test split per dataset) does not offer without rewriting
shards for every fold.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import baselines
from models.base import Calibratable, Family, default_device
from models.manifest import Manifest
from models.metrics import unfolding_scores

DEFAULT_ROOT = Path("studies-output")
CACHE_DIR = DEFAULT_ROOT / ".cache"

# The unfolding paper's five inputs (reco mass, lepton pT and isolation) plus the lepton |η|,
# which tells the network whether a lepton is in the endcap where the resolution is 2x worse.
ZLL_FEATURES = ("reco_mass", "l1_pt", "l2_pt", "l1_iso", "l2_iso", "l1_abseta", "l2_abseta")


# --------------------------------------------------------------------------------------------
# data


def simulate_cached(
    sample: str,
    events: int,
    seed: int,
    cache_dir: Path,
    *,
    smearing: float | None = None,
    mass_range: tuple[float, float] | None = None,
    masses: Sequence[float] | None = None,
) -> list[Path]:
    """ROOT files from ``jobs.simulate`` for these options, reused when already in the cache."""
    from jobs.simulate import simulate

    tag = f"{sample}-n{events}-s{seed}"
    if smearing is not None:
        tag += f"-sm{smearing:g}"
    if mass_range is not None:
        tag += f"-m{mass_range[0]:g}_{mass_range[1]:g}"
    if masses is not None:
        tag += "-M" + "_".join(f"{m:g}" for m in masses)
    where = cache_dir / tag
    final = where / f"{sample}_0000.root"
    if final.exists():
        return [final]
    # simulate() renames its files into place only when complete, so a present file is whole.
    return simulate(
        sample,
        events,
        1,
        seed,
        where,
        smearing=smearing,
        mass_range=mass_range,
        masses=None if masses is None else tuple(masses),
        workers=1,
        progress=False,
    )


def read_branches(paths: Sequence[Path], branches: Sequence[str]) -> dict[str, np.ndarray]:
    import uproot

    parts: dict[str, list[np.ndarray]] = {b: [] for b in branches}
    for p in paths:
        with uproot.open(p) as f:
            arrays = f["events"].arrays(list(branches), library="np")
        for b in branches:
            parts[b].append(np.asarray(arrays[b]))
    return {b: np.concatenate(v) for b, v in parts.items()}


def zll_events(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Reconstructed ``zll`` events: truth/reco mass and the matched leptons' features.

    The two reco leptons matched to the truth leptons are the pair ``reco_mass`` is built from,
    so the features describe exactly the measurement the classifier unfolds.
    """
    import awkward as ak
    import uproot

    out: dict[str, list[np.ndarray]] = {}
    for p in paths:
        with uproot.open(p) as f:
            a = f["events"].arrays(
                [
                    "reco_ok",
                    "truth_mass",
                    "reco_mass",
                    "lep_pt",
                    "lep_eta",
                    "lep_iso",
                    "lep_truth_index",
                ]
            )
        a = a[a.reco_ok]
        cols: dict[str, np.ndarray] = {
            "truth_mass": ak.to_numpy(a.truth_mass).astype(np.float64),
            "reco_mass": ak.to_numpy(a.reco_mass).astype(np.float64),
        }
        for k, idx in (("l1", 0), ("l2", 1)):
            sel = a.lep_truth_index == idx
            cols[f"{k}_pt"] = ak.to_numpy(ak.firsts(a.lep_pt[sel])).astype(np.float64)
            cols[f"{k}_iso"] = ak.to_numpy(ak.firsts(a.lep_iso[sel])).astype(np.float64)
            cols[f"{k}_abseta"] = np.abs(ak.to_numpy(ak.firsts(a.lep_eta[sel]))).astype(np.float64)
        for c, v in cols.items():
            out.setdefault(c, []).append(v)
    return {c: np.concatenate(v) for c, v in out.items()}


def linear_tilt(values: np.ndarray, lo: float, hi: float, tilt: float) -> np.ndarray:
    """Weights ``1 + tilt·(2(x − lo)/(hi − lo) − 1)``: ``1 − tilt`` at lo, ``1 + tilt`` at hi."""
    return 1.0 + tilt * (2.0 * (np.asarray(values, np.float64) - lo) / (hi - lo) - 1.0)


def accept_reject(weights: np.ndarray, seed: int) -> np.ndarray:
    """Mask of an unweighted subsample distributed as ``weights`` (Poisson statistics kept)."""
    w = np.asarray(weights, np.float64)
    rng = np.random.default_rng(seed)
    return rng.random(len(w)) < w / w.max()


# --------------------------------------------------------------------------------------------
# binning, folds, statistics


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (``-1`` outside ``[edges[0], edges[-1])``)."""
    e = np.asarray(edges, np.float64)
    idx = np.searchsorted(e, np.asarray(values, np.float64), side="right") - 1
    return np.where((idx >= 0) & (idx < len(e) - 1), idx, -1).astype(np.int64)


def kfold(n: int, k: int, seed: int) -> list[np.ndarray]:
    """Test indices of each of ``k`` folds of a seeded permutation of ``range(n)``."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation across folds (NaN-free values only)."""
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt_pm(mean: float, spread: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


# --------------------------------------------------------------------------------------------
# training through the family API


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-3
    patience: int = 3  # epochs without val_loss improvement before stopping
    val_fraction: float = 0.1  # of the training rows, for early stopping
    seed: int = 0
    # Fit the model's per-class calibration (``unfold_bins.calibrate``) on all rows after
    # training; without it the summed probabilities miss the truth by a few % per bin.
    calibrate: bool = True


def registry_family(name: str) -> Family:
    from models.registry import REGISTRY

    family = REGISTRY[name]
    assert isinstance(family, Family)
    return family


def build_model(
    family: Family, config: Any, manifest: Manifest | Mapping[str, Any], seed: int
) -> nn.Module:
    """The family's network for a manifest (or the dict of its fields that the family reads;
    ``data_spec`` validates it)."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict(manifest)
    spec = family.data_spec(manifest)
    torch.manual_seed(seed)
    return family.build(config, spec.dims).to(default_device())


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Torch intra-op threads for the duration of a study. One thread: the small networks here
    gain nothing from two, and on a shared 2-core machine two spin-waiting threads per process
    made training ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings,
    *,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with early stopping on ``val_loss``; the best epoch is kept.

    ``weights`` (per row) are applied by drawing each epoch's rows with replacement in
    proportion to them (and the validation rows once the same way): the expected gradient is
    the weighted one, and families need no weighted loss.
    """
    dev = default_device()
    rng = np.random.default_rng(settings.seed)
    n = len(x)
    perm = rng.permutation(n)
    n_val = max(1, int(round(settings.val_fraction * n)))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    if weights is not None:
        w = np.asarray(weights, np.float64)
        val_idx = rng.choice(val_idx, size=len(val_idx), p=w[val_idx] / w[val_idx].sum())
        w_tr = torch.as_tensor(w[tr_idx], dtype=torch.float64)
    xt = torch.as_tensor(x[tr_idx], dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y[tr_idx], dtype=torch.int64, device=dev)
    val = {
        "x": torch.as_tensor(x[val_idx], dtype=torch.float32, device=dev),
        "y": torch.as_tensor(y[val_idx], dtype=torch.int64, device=dev),
    }
    optimizers = model.configure_optimizers(settings.lr)  # type: ignore[operator]
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    bs = min(settings.batch_size, len(tr_idx))
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    history: list[float] = []
    stale = 0
    start = time.perf_counter()
    for _ in range(settings.epochs):
        model.train()
        if weights is None:
            order = torch.randperm(len(tr_idx), generator=gen)
        else:
            order = torch.multinomial(w_tr, len(tr_idx), replacement=True, generator=gen)
        order = order.to(dev)
        for i in range(0, len(order) - bs + 1, bs):
            idx = order[i : i + bs]
            model.training_step({"x": xt[idx], "y": yt[idx]}, optimizers, _step)  # type: ignore[operator]
        loss = float(model.evaluate(val)["val_loss"])  # type: ignore[operator]
        history.append(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"validation loss is {loss} after {len(history)} epochs")
        if loss < best - 1e-5:
            best, stale = loss, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if settings.patience and stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    calibration: dict[str, float] = {}
    if settings.calibrate and isinstance(model, Calibratable):
        # All rows, validation included: the fit has only one offset per class, and the
        # calibration sample's own Poisson noise enters the unfolded result, so use the most.
        calibration = model.calibrate(
            torch.as_tensor(x, dtype=torch.float32, device=dev),
            torch.as_tensor(y, dtype=torch.int64, device=dev),
            None if weights is None else torch.as_tensor(weights, dtype=torch.float64),
        )
    return {
        "epochs": len(history),
        "best_val_loss": best,
        "val_loss": history,
        "seconds": time.perf_counter() - start,
        "calibration": calibration,
    }


def standardise(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``x_train`` and ``others`` standardised with the training mean and std."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (x_train, *others)]


# --------------------------------------------------------------------------------------------
# unfolding comparison

TAU_GRID = np.logspace(-4.0, 2.0, 61)  # τ / (largest singular value of W·R)
METHODS = ("ML", "IBU", "Tikhonov", "Inversion", "Reco (no unfolding)")
SCORES = ("chi2_ndf", "ks", "ad")
SCORE_TITLES = {
    "ks": "Kolmogorov–Smirnov score (p-value, 1 = perfect)",
    "chi2_ndf": "χ²/ndf",
    "ad": "Anderson–Darling score (p-value, 1 = perfect)",
}


@dataclass
class UnfoldConfig:
    """ML model and baseline settings shared by the unfolding studies."""

    alpha: float = 4.0
    p: float = 1.0
    depth: int = 1
    ibu_iterations: int = 4
    train: TrainSettings = field(default_factory=TrainSettings)


def unfold_manifest(features: Sequence[str], edges: np.ndarray) -> dict[str, Any]:
    """The manifest fields ``unfold_bins.data_spec`` reads."""
    return {
        "features": list(features),
        "unfold": {"edges": [float(e) for e in edges], "quantity": "mass"},
    }


def baseline_unfold(
    train_truth_bin: np.ndarray,
    train_reco_bin: np.ndarray,
    measured: np.ndarray,
    n_bins: int,
    ibu_iterations: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """IBU, Tikhonov (τ from the L-curve) and inversion of ``measured`` with the training
    response; Tikhonov's bias vector is the training truth scaled to the measured total."""
    resp = baselines.response_matrix(train_truth_bin, train_reco_bin, n_bins)
    ibu = baselines.unfold_ibu(
        resp.matrix, measured, ibu_iterations, prior="truth", truth_mc=resp.truth
    )
    eff = float(resp.reco.sum() / max(resp.truth.sum(), 1.0))
    x0 = resp.truth * measured.sum() / max(resp.truth.sum(), 1.0) / max(eff, 1e-12)
    # With the MC truth as bias the L-curve corner often lies above the largest singular value
    # of W·R, where baselines.lcurve's default grid ends; scan four decades below to two above.
    w = 1.0 / np.sqrt(np.maximum(measured, 1.0))
    smax = float(np.linalg.svd(resp.matrix * w[:, None], compute_uv=False)[0])
    curve = baselines.lcurve(resp.matrix, measured, taus=smax * TAU_GRID, bias=x0)
    tik = baselines.unfold_tikhonov(resp.matrix, measured, curve.tau, bias=x0)
    try:
        inv = baselines.unfold_inversion(resp.matrix, measured)
    except np.linalg.LinAlgError:
        # an empty truth bin in the training fold (tiny samples) makes R singular
        inv = np.linalg.pinv(resp.matrix) @ measured
    return {"IBU": ibu, "Tikhonov": tik, "Inversion": inv}, {"tau": curve.tau}


def scores(hist: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """χ²/ndf, KS and AD p-values; negative bins (inversion, Tikhonov) are clipped to 0 for
    the scores, which need non-negative contents, and counted in ``negative_bins``."""
    h = np.asarray(hist, np.float64)
    out = unfolding_scores(np.clip(h, 0.0, None), truth)
    out["negative_bins"] = float(np.sum(h < 0))
    return out


@dataclass
class FoldResult:
    scores: dict[str, dict[str, float]]  # method -> score -> value
    hists: dict[str, np.ndarray]  # method -> unfolded histogram, plus "Truth"
    info: dict[str, float]


def unfold_fold(
    x: np.ndarray,
    truth_bin: np.ndarray,
    reco_bin: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    edges: np.ndarray,
    features: Sequence[str],
    cfg: UnfoldConfig,
    seed: int,
) -> FoldResult:
    """One fold: train the bin classifier and the baselines on ``train_idx``, unfold the reco
    of ``test_idx`` with every method and score against its truth."""
    from models.unfold_bins import UnfoldBinsConfig

    n_bins = len(edges) - 1
    family = registry_family("unfold_bins")
    x_tr, x_te = standardise(x[train_idx], x[test_idx])
    model = build_model(
        family,
        UnfoldBinsConfig(alpha=cfg.alpha, p=cfg.p, depth=cfg.depth),
        unfold_manifest(features, edges),
        seed,
    )
    settings = dataclasses.replace(cfg.train, seed=seed)
    history = fit(model, x_tr, truth_bin[train_idx], settings)
    with torch.no_grad():
        ml = model.unfold(torch.as_tensor(x_te, dtype=torch.float32)).cpu().numpy()  # type: ignore[operator]
    truth = np.bincount(truth_bin[test_idx], minlength=n_bins).astype(np.float64)
    measured = np.bincount(reco_bin[test_idx], minlength=n_bins).astype(np.float64)
    base, extra = baseline_unfold(
        truth_bin[train_idx], reco_bin[train_idx], measured, n_bins, cfg.ibu_iterations
    )
    hists = {"ML": ml, **base, "Reco (no unfolding)": measured, "Truth": truth}
    result = {m: scores(hists[m], truth) for m in METHODS}
    info = {"epochs": float(history["epochs"]), "train_seconds": history["seconds"], **extra}
    return FoldResult(result, hists, info)


def _one_thread() -> None:
    torch.set_num_threads(1)


def unfolding_kfold(
    x: np.ndarray,
    truth_bin: np.ndarray,
    reco_bin: np.ndarray,
    edges: np.ndarray,
    features: Sequence[str],
    folds: int,
    cfg: UnfoldConfig,
    seed: int,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> list[FoldResult]:
    """k-fold comparison: each fold is held out once and unfolded by models trained on the
    others (the paper's 10-fold cross-validation).

    ``jobs > 1`` trains folds in that many spawned processes (one torch thread each); every fold
    is seeded on its own, so the results are the same as with ``jobs=1``.
    """
    parts = kfold(len(x), folds, seed)
    tasks = [
        (
            x,
            truth_bin,
            reco_bin,
            np.concatenate([p for j, p in enumerate(parts) if j != i]),
            test_idx,
            edges,
            features,
            cfg,
            seed + 1000 * i,
        )
        for i, test_idx in enumerate(parts)
    ]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread) as pool:
            outcomes = pool.map(unfold_fold, *zip(*tasks, strict=True))
            return [_log_fold(i, folds, r, log) for i, r in enumerate(outcomes)]
    return [_log_fold(i, folds, unfold_fold(*t), log) for i, t in enumerate(tasks)]


def _log_fold(i: int, folds: int, r: FoldResult, log: Callable[[str], None]) -> FoldResult:
    log(
        f"  fold {i + 1}/{folds}: "
        + ", ".join(f"{m} χ²/ndf={r.scores[m]['chi2_ndf']:.3g}" for m in METHODS)
        + f" ({r.info['epochs']:.0f} epochs, {r.info['train_seconds']:.1f}s)"
    )
    return r


# --------------------------------------------------------------------------------------------
# tables


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        def cell(v: Any) -> str:
            if isinstance(v, float):
                return "n/a" if not math.isfinite(v) else f"{v:.4g}"
            return str(v).replace("|", "\\|")  # |η| must not split a Markdown cell

        lines = [f"### {self.title}", "", "| " + " | ".join(cell(c) for c in self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(self.rows)
        return buf.getvalue()


@contextmanager
def output_dir(out: Path) -> Iterator[Path]:
    """A temporary directory next to ``out`` that replaces ``out`` only when the study
    finishes; on failure nothing is left behind."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def ray_workers_import_repo() -> None:
    """Put this repository first on ``PYTHONPATH`` so the Ray workers a study's scan starts
    import its families and selections (``scan.launch`` runs trials in new processes)."""
    import os

    repo = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if repo not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([repo, *[p for p in paths if p]])


def exit_on_sigterm() -> None:
    """Turn SIGTERM (what SLURM and ``kill`` send) into SystemExit so :func:`output_dir`
    removes its temporary directory instead of leaving it behind."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def write_tables(directory: Path, stem: str, tables: Sequence[Table], header: str = "") -> str:
    """``stem.md`` (all tables) and ``stem[_i].csv`` (one per table); returns the Markdown."""
    md = (header + "\n\n" if header else "") + "\n".join(t.markdown() for t in tables)
    (directory / f"{stem}.md").write_text(md)
    for i, t in enumerate(tables):
        name = f"{stem}.csv" if len(tables) == 1 else f"{stem}_{i}.csv"
        (directory / name).write_text(t.csv())
    return md


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# plots


def plot_unfolded(
    edges: np.ndarray,
    truth: np.ndarray,
    reco: np.ndarray,
    unfolded: Mapping[str, np.ndarray],
    path: Path,
    *,
    title: str = "",
    xlabel: str = "mass [GeV]",
    logy: bool = False,
) -> None:
    """Truth, reco and unfolded histograms with a ratio-to-truth panel
    (``tracking.plots.plot_unfolded``), the ratio axis fixed to ±20 % so a diverging
    inversion does not flatten the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tracking.plots import plot_unfolded as _plot
    from tracking.plots import save_png

    fig = _plot(
        edges,
        truth,
        reco,
        {f"unfolded ({k})": v for k, v in unfolded.items()},
        title=title,
        xlabel=xlabel,
    )
    top, bottom = fig.axes[0], fig.axes[1]
    if logy:
        top.set_yscale("log")
    bottom.set_ylim(0.8, 1.2)
    save_png(fig, path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the unfolding table (studies 1 and 2)


def unfolding_tables(
    results: Mapping[str, Sequence[FoldResult]], column_title: str
) -> tuple[list[Table], Table]:
    """Paper-style tables (one per score; rows = methods, columns = configurations, cells
    ``mean ± std`` across folds) and one long table with every number."""
    configs = list(results)
    paper: list[Table] = []
    long_rows: list[list[Any]] = []
    for score in SCORES:
        rows: list[list[Any]] = []
        for m in METHODS:
            row: list[Any] = [m]
            for c in configs:
                vals = [r.scores[m][score] for r in results[c]]
                mean, sd = mean_spread(vals)
                row.append(fmt_pm(mean, sd))
                finite = [v for v in vals if math.isfinite(v)]
                long_rows.append(
                    [
                        score,
                        m,
                        c,
                        mean,
                        sd,
                        min(finite) if finite else math.nan,
                        max(finite) if finite else math.nan,
                        len(vals),
                    ]
                )
            rows.append(row)
        paper.append(Table(SCORE_TITLES[score], ["Method", *configs], rows))
    neg_rows = []
    for m in ("Tikhonov", "Inversion"):
        neg_rows.append(
            [m]
            + [
                fmt_pm(*mean_spread([r.scores[m]["negative_bins"] for r in results[c]]), digits=1)
                for c in configs
            ]
        )
    paper.append(
        Table("Negative bins (clipped to 0 for the scores)", ["Method", *configs], neg_rows)
    )
    long = Table(
        "All scores",
        ["score", "method", column_title, "mean", "std", "min", "max", "folds"],
        long_rows,
    )
    return paper, long
