"""Scan results: the :class:`ScanResult` of ``launch``/``resume`` and ``hepscan report DIR``.

.. code-block:: bash

    hepscan report scans/zll            # table, best trial, importances, PNGs in scans/zll/report/

(the command is in :mod:`scan.commands`)

Everything is read back from the scan directory (Tune's experiment state and per-trial results),
so a report works while a scan is interrupted, and without Ray running. Parameter importances
come from Optuna (``optuna.importance.get_param_importances``, fANOVA) on a study rebuilt from
the trials table: one completed Optuna trial per scan trial that reported its objective.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import require
from scan.state import (
    TUNE_DIR,
    load_saved_config,
    tracking_mapping,
    tracking_state,
    tracking_uri_of,
    trial_finished,
    trial_params,
)

if TYPE_CHECKING:
    import pandas as pd

    from scan.config import ScanConfig


@dataclass
class ScanResult:
    """What a scan produced; ``trials`` has one row per trial (params, objectives, status)."""

    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    trials: pd.DataFrame
    parent_run_id: str | None
    scan_dir: Path
    tracking_uri: str = ""
    best_trial_id: str | None = None
    objectives: list[tuple[str, str]] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    def ranked(self) -> pd.DataFrame:
        """Trials sorted by the primary objective (best first; failed trials last)."""
        if not self.objectives or self.trials.empty:
            return self.trials
        metric, mode = self.objectives[0]
        col = f"best_{metric}"
        return self.trials.sort_values(col, ascending=mode == "min", na_position="last")

    def table(self, max_rows: int = 50) -> str:
        df = self.ranked()
        if df.empty:
            return "(no trials)"
        cols = ["trial_id", "status", "retries", "epochs", "time_total_s"]
        cols += [f"best_{m}" for m, _ in self.objectives]
        cols += [p for p in self.param_names if p in df.columns]
        view = df[[c for c in cols if c in df.columns]].head(max_rows).copy()
        view.insert(0, "rank", range(1, len(view) + 1))
        with _pandas_display():
            return str(view.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    def retried(self) -> dict[str, int]:
        """Trials Tune restarted after a failure (a rank or node lost): trial id -> retries."""
        if self.trials.empty or "retries" not in self.trials:
            return {}
        df = self.trials[self.trials["retries"] > 0]
        return {str(t): int(n) for t, n in zip(df["trial_id"], df["retries"], strict=True)}

    def summary(self) -> dict[str, Any]:
        counts = self.trials["status"].value_counts().to_dict() if not self.trials.empty else {}
        out: dict[str, Any] = {
            "num_trials": len(self.trials),
            "best_trial_id": self.best_trial_id,
            "best_config": json.dumps(self.best_config, default=str, sort_keys=True),
        }
        out.update({f"trials_{k.lower()}": int(v) for k, v in counts.items()})
        out["trial_retries"] = sum(self.retried().values())
        out.update({f"best_{k}": v for k, v in self.best_metrics.items() if _finite(v)})
        return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class _pandas_display:
    def __enter__(self) -> None:
        import pandas as pd

        self._ctx = pd.option_context("display.width", 200, "display.max_columns", 50)
        self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _status(trial: Any, max_epochs: int) -> str:
    last = trial.last_result or {}
    if trial.status == "ERROR":
        return "FAILED"
    if trial.status == "TERMINATED":
        return "FINISHED" if trial_finished(last, max_epochs) else "KILLED"
    return str(trial.status)  # RUNNING / PENDING / PAUSED: an interrupted scan


def collect_result(
    cfg: ScanConfig,
    scan_dir: str | Path,
    *,
    grid: Any = None,
    parent_run_id: str | None = None,
) -> ScanResult:
    """Build the :class:`ScanResult` of ``scan_dir`` from Tune's saved experiment state."""
    import pandas as pd

    d = Path(scan_dir)
    analysis = require("ray.tune").ExperimentAnalysis(str(d / TUNE_DIR))
    mapping = tracking_mapping(d)
    objectives: list[tuple[str, str]] = [(o.metric, str(o.mode)) for o in cfg.objective_list]
    rows = []
    for trial in analysis.trials:
        hist = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        if not hist.empty and "training_iteration" in hist:
            # A resumed trial may repeat the epoch it was interrupted in: keep the last report.
            hist = hist.drop_duplicates("training_iteration", keep="last")
        last = dict(trial.last_result or {})
        failures = int(getattr(trial, "num_failures", 0) or 0)
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "status": _status(trial, cfg.max_epochs),
            # times Tune restarted the trial from its last checkpoint (max_failures); a trial
            # that failed for good failed once more than it was retried
            "retries": max(0, failures - (trial.status == "ERROR")),
            "epochs": int(last.get("training_iteration", 0) or 0),
            "time_total_s": float(last.get("time_total_s", math.nan) or math.nan),
            "run_id": mapping.get(trial.trial_id),
        }
        for metric, mode in objectives:
            col = hist[metric] if metric in hist else pd.Series(dtype=float)
            col = pd.to_numeric(col, errors="coerce").dropna()
            row[f"last_{metric}"] = float(last[metric]) if _finite(last.get(metric)) else math.nan
            if col.empty:
                row[f"best_{metric}"] = math.nan
            else:
                row[f"best_{metric}"] = float(col.min() if mode == "min" else col.max())
        row.update(trial_params(trial.config))
        rows.append(row)
    trials = pd.DataFrame(rows)
    params = [p for p in cfg.space] + [p for p in cfg.fixed if p not in cfg.space]
    result = ScanResult(
        best_config={},
        best_metrics={},
        trials=trials,
        parent_run_id=parent_run_id or tracking_state(d).get("parent_run_id"),
        scan_dir=d,
        tracking_uri=tracking_uri_of(d),
        objectives=objectives,
        param_names=params,
    )
    ranked = result.ranked()
    metric = objectives[0][0]
    if not ranked.empty and _finite(ranked.iloc[0].get(f"best_{metric}")):
        best = ranked.iloc[0]
        result.best_trial_id = str(best["trial_id"])
        result.best_config = {
            p: _py(best[p]) for p in params if p in best.index and not _isnan(best[p])
        }
        result.best_metrics = {
            m: float(best[f"best_{m}"]) for m, _ in objectives if _finite(best[f"best_{m}"])
        }
    return result


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# ------------------------------------------------------------------------------ importances


def param_importances(result: ScanResult, cfg: ScanConfig) -> dict[str, dict[str, float]]:
    """Optuna fANOVA importances per objective, from a study rebuilt from ``result.trials``."""
    optuna = require("optuna")

    from scan.space import optuna_distributions

    dists = optuna_distributions(cfg.space)
    out: dict[str, dict[str, float]] = {}
    for metric, mode in result.objectives:
        col = f"best_{metric}"
        if col not in result.trials:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
            for _, row in result.trials.iterrows():
                value = row[col]
                if not _finite(value):
                    continue
                params = {
                    p: _py(row[p])
                    for p in dists
                    if p in row.index and row[p] is not None and not _isnan(row[p])
                }
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params,
                        distributions={p: dists[p] for p in params},
                        value=float(value),
                    )
                )
            if len(study.trials) < 2:
                continue
            try:
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=cfg.seed)
                )
            except (RuntimeError, ValueError):
                continue
        out[metric] = {k: float(v) for k, v in imp.items()}
    return out


# ------------------------------------------------------------------------------ plots


def report_plots(result: ScanResult, out_dir: Path) -> list[Path]:
    """Objective vs trial order, objective vs each numeric parameter, Pareto front (2 obj.)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    df = result.trials
    if df.empty or not result.objectives:
        return paths
    metric, mode = result.objectives[0]
    y = df[f"best_{metric}"].to_numpy(dtype=float)
    colors = {"FINISHED": "tab:blue", "KILLED": "tab:orange", "FAILED": "tab:red"}
    c = [colors.get(s, "tab:gray") for s in df["status"]]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(np.arange(len(y)), y, c=c, s=18)
    run = (
        np.fmin.accumulate(np.where(np.isfinite(y), y, np.inf))
        if mode == "min"
        else (np.fmax.accumulate(np.where(np.isfinite(y), y, -np.inf)))
    )
    ax.step(np.arange(len(y)), run, where="post", color="black", linewidth=1, label="best so far")
    ax.set_xlabel("trial (creation order)")
    ax.set_ylabel(metric)
    if mode == "min" and np.nanmin(np.where(np.isfinite(y), y, np.nan)) > 0:
        ax.set_yscale("log")
    ax.legend(frameon=False)
    ax.set_title("blue finished, orange stopped by ASHA, red failed", fontsize=8)
    paths.append(_save(fig, out_dir / "history.png"))

    numeric = [p for p in result.param_names if p in df and _is_numeric(df[p])]
    if numeric:
        n = len(numeric)
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
        for ax, p in zip(axes[0], numeric, strict=True):
            ax.scatter(df[p].astype(float), y, c=c, s=14)
            ax.set_xlabel(p)
            ax.set_ylabel(metric)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "params.png"))

    if len(result.objectives) >= 2:
        (m1, _), (m2, _) = result.objectives[:2]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(df[f"best_{m1}"], df[f"best_{m2}"], c=c, s=18)
        ax.set_xlabel(m1)
        ax.set_ylabel(m2)
        ax.set_title("objectives (Pareto view)")
        paths.append(_save(fig, out_dir / "pareto.png"))
    return paths


def _is_numeric(s: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(s)) and not bool(pd.api.types.is_bool_dtype(s))


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def build_report(scan_dir: str | Path) -> tuple[ScanResult, str, list[Path]]:
    """(result, text, plot paths) of a scan directory."""
    from tracking.store import ui_command

    d = Path(scan_dir).absolute()
    cfg = load_saved_config(d)
    if not (d / TUNE_DIR).exists():
        from models.errors import InputError

        raise InputError(f"{d / TUNE_DIR}: the scan has not started any trial yet")
    result = collect_result(cfg, d)
    lines = [f"scan {cfg.name}: {cfg.family} on {cfg.dataset}", ""]
    lines.append(result.table())
    lines.append("")
    counts = result.trials["status"].value_counts().to_dict() if not result.trials.empty else {}
    lines.append(
        f"{len(result.trials)} of {cfg.num_trials} trials: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    )
    retried = result.retried()
    if retried:
        lines.append(
            "retried trials (restarted from their last checkpoint): "
            + ", ".join(f"{t} ({n}x)" for t, n in retried.items())
        )
    if result.best_trial_id:
        lines.append(f"best trial {result.best_trial_id}: {result.best_metrics}")
        lines.append(f"  config: {json.dumps(result.best_config, default=str)}")
    imps = param_importances(result, cfg)
    for metric, imp in imps.items():
        lines.append(f"parameter importances for {metric} (Optuna fANOVA):")
        lines += [f"  {k:24s} {v:.3f}" for k, v in imp.items()]
    plots = report_plots(result, d / "report")
    if plots:
        lines.append("plots: " + ", ".join(str(p) for p in plots))
    lines.append(f"MLflow parent run: {result.parent_run_id}")
    lines.append(f"review: {ui_command(result.tracking_uri)}")
    return result, "\n".join(lines), plots
