"""Study 10 — fast detector simulation that is measured: flow vs GAN vs resolution-classifier
sampling vs the simulator (paper 003; issue 12).

For each sample (``jets`` and ``jets_tail``, the same detector with a Crystal Ball low tail in
the pT response):

1. ``jobs.simulate``: a training sample (seed ``s``), an independent evaluation sample (seed
   ``s + 100``) and the simulator re-run with another seed (``s + 200``, the noise floor);
2. ``jobs.preprocess`` of the training sample (``configs/preprocess_<sample>.yaml``);
3. one real ``scan.launch`` per family — ``configs/flow_jets.yaml``, ``gan_jets.yaml``,
   ``resolution_jets.yaml`` with TPE + ASHA, single-rank trials at concurrency 2 (full: 24
   trials each; fast: 2 tiny trials, ``jets`` only) — and the best trial's checkpoint;
4. the contenders generate reco objects for the evaluation truth objects: flow and GAN
   (``sample``; an object counts as reconstructed when its generated pT exceeds 0.1 × truth
   pT — the simulator writes 0 for a lost jet and the families learn that spike), the
   resolution classifier (``smear``), the Gaussian baseline fitted to the training sample
   (``generative_refs.GaussianSmearing``) and the simulator re-run;
5. metrics from ``models.metrics`` against the evaluation sample: ``detector_auc`` (the fixed
   HistGradientBoosting two-sample test), Wasserstein-1 and KS of the four responses (reco/truth
   pT, Δη, Δφ, reco/truth m; W1 in units of the simulator's standard deviation), the response
   mean and RMS90 in (|η|, truth pT) bins (``response_agreement``: fraction of well-populated
   bins within 5 %), the efficiency vs |η|, the largest change of a correlation between the 8
   detector features and the generation speed (objects/s, one thread) vs the simulator.

Launch::

    python -m benchmarks.studies.generative_jets                  # full (make generative-jets)
    python -m benchmarks.studies.generative_jets --fast --out /tmp/s7

Outputs in --out (default studies-output/generative_jets): ``table.md``, ``table_*.csv``,
``response_<sample>.png``, ``rms90_<sample>.png``, ``efficiency_<sample>.png``. The scan
directories (with their MLflow stores) are ``<cache>/scan-generative_jets-<sample>-<family>-*``.
The last printed line is ``flow_auc=<value>`` (flow on ``jets``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.studies import common
from benchmarks.studies.generative_refs import (
    ETA_EDGES,
    PT_EDGES,
    QUANTITIES,
    GaussianSmearing,
    Objects,
    load_objects,
    simulator_speed,
)

NAME = "generative_jets"
REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("flow", "gan", "resolution")
SCAN_CONFIGS = {f: REPO / "configs" / f"{f}_jets.yaml" for f in FAMILIES}
SAMPLES = ("jets", "jets_tail")
RESPONSES = ("pT ratio", "Δη", "Δφ", "m ratio")
EFF_EDGES = np.linspace(0.0, 4.0, 17)
LOST_FRACTION = 0.1  # flow/GAN: generated pT below this fraction of truth pT = not reconstructed
# Scan objective per family (single objective: ASHA stops on it, the best trial is chosen by it)
OBJECTIVES = {"flow": "val_loss", "gan": "wasserstein", "resolution": "wasserstein"}
# fast mode: tiny spaces so that a 2-trial scan takes seconds
FAST_SPACES: dict[str, dict[str, Any]] = {
    "flow": {
        "transforms": {"type": "int", "low": 1, "high": 2},
        "hidden_features": {"type": "int", "low": 16, "high": 32},
        "lr": {"type": "loguniform", "low": 1.0e-3, "high": 3.0e-3},
    },
    "gan": {
        "hidden": {"type": "int", "low": 32, "high": 48},
        "critic_hidden": {"type": "int", "low": 32, "high": 48},
        "lr": {"type": "loguniform", "low": 3.0e-4, "high": 1.0e-3},
    },
    "resolution": {
        "hidden": {"type": "int", "low": 32, "high": 48},
        "lr": {"type": "loguniform", "low": 1.0e-3, "high": 3.0e-3},
    },
}
GOALS = (  # (contender, metric, comparison, value) on jets
    ("flow", "auc", "<=", 0.55),
    ("flow", "frac_rms90", ">=", 0.95),
    ("gan", "auc", "<=", 0.60),
    ("resolution", "frac_rms90", ">=", 0.95),
)


@dataclass
class Settings:
    train_events: int
    test_events: int
    trials: int
    epochs: int
    min_count: int  # well-populated (|η|, pT) bin: objects of the simulator and the contender
    samples: tuple[str, ...]
    scan_samples: tuple[str, ...]
    fast: bool
    scan_rows: int | None  # the scans' trials read the first rows of each split only
    final_epochs: int  # the best configuration, retrained on every training row
    batch_size: int = 1024
    seed: int = 7


@dataclass
class Contender:
    name: str
    reco: np.ndarray
    ok: np.ndarray
    truth: np.ndarray  # the truth objects it smeared (the evaluation sample's, or its own)
    speed: float  # objects/s
    source: str = "—"
    trials: int = 0
    scan_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# scans


def training_data(sample: str, events: int, seed: int, cache: Path) -> Path:
    """Preprocessed shards of the training sample (reused when present)."""
    from jobs.preprocess import preprocess

    files = common.simulate_cached(sample, events, seed, cache)
    data = cache / NAME / f"{sample}-n{events}-s{seed}"
    if not (data / "manifest.json").exists():
        preprocess(
            REPO / "configs" / f"preprocess_{sample}.yaml",
            data,
            inputs=[str(f) for f in files],
            workers=1,
            overwrite=True,
        )
    return data


def scan_overrides(family: str, data: Path, s: Settings) -> dict[str, Any]:
    import yaml

    shipped = yaml.safe_load(SCAN_CONFIGS[family].read_text())
    objective = {"metric": OBJECTIVES[family], "mode": "min"}
    out: dict[str, Any] = {
        "dataset": str(data),
        "num_trials": s.trials,
        "max_epochs": s.epochs,
        "concurrency": 2,
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "backend": "single",
        "searcher": "tpe",
        # the single objective replaces the file's (objective or objectives, whichever it has)
        **({"objective": objective} if "objective" in shipped else {"objectives": [objective]}),
        "register": False,
        "seed": s.seed,
    }
    out["fixed"] = {**shipped.get("fixed", {}), "max_rows": s.scan_rows}
    out["scheduler"] = {"type": "asha", "grace_period": 2 if family == "gan" else 1}
    if family == "gan":  # a GAN needs generator steps: 4x more of them per row than at 1024
        out["fixed"]["batch_size"] = 256
    if s.fast:
        out["search_space"] = FAST_SPACES[family]
        out["fixed"] = {**out["fixed"], "batch_size": 512}
        out["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
    return out


def run_scan(family: str, sample: str, data: Path, s: Settings, cache: Path) -> dict[str, Any]:
    """A real scan of ``family``: the best trial's checkpoint and the parent run id."""
    from scan import launch
    from scan.publish import ranked_checkpoints

    scan_dir = cache / f"scan-{NAME}-{sample}-{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    result = launch(
        SCAN_CONFIGS[family], scan_overrides(family, data, s), scan_dir=scan_dir, verbose=0
    )
    best = ranked_checkpoints(result, 1)
    if not best:
        raise RuntimeError(f"{scan_dir}: no trial of the {family} scan left a checkpoint")
    _, trial_id, ckpt, metrics = best[0]
    seconds = time.perf_counter() - start
    print(
        f"  {sample}/{family}: scan {scan_dir.name}, {len(result.trials)} trials in "
        f"{seconds:.0f} s; best {trial_id} {metrics} parent run {result.parent_run_id}",
        flush=True,
    )
    return {
        "checkpoint": ckpt,
        "parent_run_id": result.parent_run_id or "—",
        "trials": len(result.trials),
        "scan_dir": str(scan_dir),
        "best_config": result.best_config,
        "scan_s": seconds,
        "sample": sample,
    }


def final_model(
    family: str, sample: str, checkpoint: Path, data: Path, s: Settings, cache: Path
) -> dict[str, Any]:
    """The scan's best configuration (read from its checkpoint) trained again on every training
    row of ``data`` for ``final_epochs`` (the scans read ``scan_rows`` rows per split), in this
    process; the best epoch's model and its column orders."""
    from jobs.apply.bundle import bundle_from_checkpoint, checkpoint_file
    from jobs.train import train, train_config_from_dict

    stored = torch.load(checkpoint_file(checkpoint), map_location="cpu", weights_only=True)
    cfg = dict(stored["train_config"])
    out_dir = cache / f"final-{NAME}-{sample}-{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.update(
        dataset=str(data),
        max_rows=None,
        epochs=s.final_epochs,
        patience=0,
        backend="single",
        workers=1,
        checkpoint_dir=str(out_dir),
    )
    start = time.perf_counter()
    with common.torch_threads(2):
        result = train(train_config_from_dict(cfg, f"{family} final training"))
    ckpt = result.best_checkpoint_path or result.checkpoint_path
    if ckpt is None:
        raise RuntimeError(f"{out_dir}: the final {family} training wrote no checkpoint")
    bundle = bundle_from_checkpoint(ckpt)
    # the model's column order (the manifest may list the quantities in another order)
    x_order = [QUANTITIES.index(c.split("_", 1)[1]) for c in bundle.spec.x_columns]
    if family == "resolution":
        y_order = x_order  # smear returns the quantities in input order
    else:
        y_order = [QUANTITIES.index(c.split("_", 1)[1]) for c in bundle.spec.y_columns]
    seconds = time.perf_counter() - start
    print(
        f"  {sample}/{family}: final training {result.epochs_run} epochs on all rows in "
        f"{seconds:.0f} s, best epoch {result.best_epoch} "
        f"({result.config.monitor} {result.best_metric:.4g})",
        flush=True,
    )
    return {"model": bundle.build(), "x_order": x_order, "y_order": y_order, "final_s": seconds}


def generate(
    family: str,
    model: Any,
    truth: np.ndarray,
    seed: int,
    x_order: Sequence[int] = (0, 1, 2, 3),
    y_order: Sequence[int] = (0, 1, 2, 3),
) -> tuple[Any, ...]:
    """(reco, reconstructed, objects/s) of a trained family for these truth objects (columns
    (pt, eta, phi, m); ``x_order``/``y_order``: the model's input/output columns as indices
    into them)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(truth[:, list(x_order)], dtype=torch.float32)
    start = time.perf_counter()
    out = np.empty_like(truth)
    if family == "resolution":
        reco_t, ok_t = model.smear(x, generator=gen)
        out[:, list(y_order)] = reco_t.double().cpu().numpy()
        ok = ok_t.cpu().numpy().astype(bool)
    else:
        out[:, list(y_order)] = model.sample(x, generator=gen).double().cpu().numpy()
        ok = out[:, 0] > LOST_FRACTION * truth[:, 0]
    reco = out
    reco[~ok] = np.nan
    speed = len(truth) / max(time.perf_counter() - start, 1e-9)
    return reco, ok, speed


# --------------------------------------------------------------------------------------------
# metrics


def responses(truth: np.ndarray, reco: np.ndarray) -> np.ndarray:
    from models.metrics import detector_features

    return detector_features(truth, reco)[:, 4:]


def evaluate(ref: Objects, c: Contender, s: Settings, sim_speed: float) -> dict[str, Any]:
    from models.metrics import (
        correlation_difference,
        detector_auc,
        detector_features,
        efficiency_vs,
        ks_samples,
        response_agreement,
        wasserstein_per_feature,
    )

    t_ref, r_ref = ref.truth[ref.ok], ref.reco[ref.ok]
    t_c, r_c = c.truth[c.ok], c.reco[c.ok]
    out: dict[str, Any] = {"auc": detector_auc(t_ref, r_ref, t_c, r_c, seed=s.seed)}
    d_ref, d_c = responses(t_ref, r_ref), responses(t_c, r_c)
    finite = np.all(np.isfinite(d_c), axis=1)
    d_c = d_c[finite]
    scale = d_ref.std(axis=0)
    out["w1"] = wasserstein_per_feature(d_ref, d_c) / scale
    out["ks"] = np.array([ks_samples(d_ref[:, i], d_c[:, i]).statistic for i in range(4)])
    agree = response_agreement(
        d_ref[:, 0],
        np.abs(t_ref[:, 1]),
        t_ref[:, 0],
        d_c[:, 0],
        np.abs(t_c[finite, 1]),
        t_c[finite, 0],
        ETA_EDGES,
        PT_EDGES,
        min_count=s.min_count,
    )
    out.update(agree)
    out["eff"] = efficiency_vs(np.abs(c.truth[:, 1]), c.ok, EFF_EDGES)
    out["eff_ref"] = efficiency_vs(np.abs(ref.truth[:, 1]), ref.ok, EFF_EDGES)
    fwd = np.abs(c.truth[:, 1]) > 2.5
    out["eff_central"] = float(c.ok[~fwd].mean())
    out["eff_forward"] = float(c.ok[fwd].mean())
    out["max_eff_dev"] = float(np.nanmax(np.abs(out["eff"] - out["eff_ref"])))
    f_ref = detector_features(t_ref, r_ref)
    f_c = detector_features(t_c, r_c)
    out["corr_dev"] = correlation_difference(f_ref, f_c[np.all(np.isfinite(f_c), axis=1)])
    out["speed"] = c.speed
    out["speed_ratio"] = c.speed / sim_speed
    return out


# --------------------------------------------------------------------------------------------
# the study


def settings_for(fast: bool, **kw: Any) -> Settings:
    s = Settings(
        train_events=20_000 if fast else 400_000,
        test_events=60_000 if fast else 400_000,
        trials=2 if fast else 24,
        epochs=2 if fast else 12,
        min_count=1000 if fast else 2000,
        samples=SAMPLES,
        scan_samples=("jets",),
        fast=fast,
        scan_rows=None if fast else 50_000,
        final_epochs=1 if fast else 15,
        batch_size=512 if fast else 1024,
    )
    for k, v in kw.items():
        if v is not None:
            setattr(s, k, v)
    return s


def run(
    out: Path,
    *,
    fast: bool = False,
    cache_dir: Path | None = None,
    train_events: int | None = None,
    test_events: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    samples: Sequence[str] | None = None,
    scan_samples: Sequence[str] | None = None,
    families: Sequence[str] = FAMILIES,
    seed: int = 7,
) -> dict[str, Any]:
    from benchmarks.studies import generative_report as report

    s = settings_for(
        fast,
        train_events=train_events,
        test_events=test_events,
        trials=trials,
        epochs=epochs,
        samples=tuple(samples) if samples else None,
        scan_samples=tuple(scan_samples) if scan_samples is not None else None,
        seed=seed,
    )
    cache = (cache_dir or (out.parent / ".cache")).absolute()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    contenders: dict[str, list[Contender]] = {}
    evals: dict[str, Objects] = {}
    scans: dict[str, dict[str, Any]] = {}  # family -> its scan (a later sample reuses it)
    with common.torch_threads(1), _ray(cache, any(s.scan_samples)), common.output_dir(out) as tmp:
        for sample in s.samples:
            train = load_objects(sample, s.train_events, s.seed, cache)
            ev = load_objects(sample, s.test_events, s.seed + 100, cache)
            reseed = load_objects(sample, s.test_events, s.seed + 200, cache)
            evals[sample] = ev
            sim_speed = simulator_speed(sample, len(ev), s.seed)
            gauss = GaussianSmearing().fit(train)
            t0 = time.perf_counter()
            g_reco, g_ok = gauss.smear(ev.truth, s.seed)
            g_speed = len(ev) / max(time.perf_counter() - t0, 1e-9)
            cs = [
                Contender("simulator (reseed)", reseed.reco, reseed.ok, reseed.truth, sim_speed),
                Contender("Gaussian per |η| bin", g_reco, g_ok, ev.truth, g_speed),
            ]
            if sample in s.scan_samples or scans:
                data = training_data(sample, s.train_events, s.seed, cache)
                for fam in families:
                    if sample in s.scan_samples:
                        scans[fam] = run_scan(fam, sample, data, s, cache)
                    sc = scans[fam]
                    fin = final_model(fam, sample, sc["checkpoint"], data, s, cache)
                    reco, ok, speed = generate(
                        fam, fin["model"], ev.truth, s.seed, fin["x_order"], fin["y_order"]
                    )
                    cs.append(
                        Contender(
                            fam,
                            reco,
                            ok,
                            ev.truth,
                            speed,
                            source=sc["parent_run_id"],
                            trials=sc["trials"],
                            scan_dir=sc["scan_dir"],
                            extra={
                                "best_config": sc["best_config"],
                                "scanned_on": sc["sample"],
                                "scan_s": sc["scan_s"],
                                "final_s": fin["final_s"],
                            },
                        )
                    )
            contenders[sample] = cs
            results[sample] = {c.name: evaluate(ev, c, s, sim_speed) for c in cs}
            results[sample]["simulator"] = {"speed": sim_speed}
            for c in cs:
                r = results[sample][c.name]
                print(
                    f"  {sample}/{c.name}: AUC {r['auc']:.3f}, RMS90 within 5 % in "
                    f"{r['frac_rms90']:.2f} of {r['n_bins']:.0f} bins, eff fwd "
                    f"{r['eff_forward']:.3f}, {r['speed']:.3g} objects/s"
                )
            report.plots(sample, ev, cs, tmp)
        tables = report.tables(results, contenders, s)
        goals = report.goals(results, GOALS)
        header = (
            f"# Study 10: fast detector simulation on jets ({'fast' if fast else 'full'} mode: "
            f"{s.train_events} training / {s.test_events} evaluation objects per sample, "
            f"{s.trials} trials × ≤{s.epochs} epochs per scan, scanned on "
            f"{', '.join(s.scan_samples) or 'none'}; {time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", [*tables, goals], header)
    print(md)
    for row in goals.rows:
        print(f"goal {row[0]} {row[1]} {row[2]}: {row[3]} -> {row[4]}")
    flow = results.get("jets", {}).get("flow", {})
    flow_auc = float(flow.get("auc", math.nan))
    print(f"flow_auc={flow_auc:.4f}")
    return {"results": results, "tables": [*tables, goals], "flow_auc": flow_auc, "settings": s}


class _ray:
    """Ray started once for all the scans of the study (``scan.launch`` joins it)."""

    def __init__(self, cache: Path, needed: bool) -> None:
        self.cache, self.needed, self.started = cache, needed, False

    def __enter__(self) -> None:
        if self.needed:
            from scan.driver import _init_ray

            self.started = _init_ray(None, self.cache, verbose=0)

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--train-events", type=int, default=None)
    ap.add_argument("--test-events", type=int, default=None)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--samples", nargs="+", choices=SAMPLES, default=None)
    ap.add_argument("--scan-samples", nargs="*", choices=SAMPLES, default=None)
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    run(
        args.out,
        fast=args.fast,
        cache_dir=args.cache_dir,
        train_events=args.train_events,
        test_events=args.test_events,
        trials=args.trials,
        epochs=args.epochs,
        samples=args.samples,
        scan_samples=args.scan_samples,
        families=args.families,
        seed=args.seed,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
