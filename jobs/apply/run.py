"""Apply model bundles to events and write the results into a new directory, atomically.

.. code-block:: python

    from jobs.apply import apply_bundles, load_inputs
    from models.bundle import ModelBundle
    bundle = ModelBundle.load("bundle_dir")
    result = apply_bundles([bundle], "out", load_inputs(bundle, ["data/zll"], split="test"))
    result.metrics["chi2_ndf"], result.files

Everything is written into ``OUT.tmp-XXXX`` next to ``OUT`` and renamed to ``OUT`` at the end;
on any error the temporary directory is removed and ``OUT`` does not exist. ``before_install``
(e.g. the MLflow logging of :mod:`scan.apply`) runs on the complete temporary directory just
before the rename, so its failure leaves no output either.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.apply.inputs import Inputs
from models.bundle import ModelBundle
from models.errors import ConfigError, OutputError

__all__ = ["ApplyResult", "apply_bundles", "summary_lines"]


@dataclass
class ApplyResult:
    kind: str  # "unfold" | "resolution" | "generative"
    out: Path
    files: list[Path]
    metrics: dict[str, float]
    provenance: dict[str, Any]
    unfolding: Any = None  # jobs.apply.unfold.UnfoldResult
    generated: Any = None  # jobs.apply.generate.GenerateResult
    extra: dict[str, Any] = field(default_factory=dict)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (choose another --out, or --overwrite)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot create ({exc.strerror or exc})") from None


def apply_bundles(
    bundles: list[ModelBundle],
    out: str | os.PathLike[str],
    inputs: Inputs,
    *,
    bootstrap: int = 100,
    seed: int = 0,
    prior_iterations: int = 0,
    fmt: str = "parquet",
    title: str = "",
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    before_install: Callable[[Path, ApplyResult], None] | None = None,
) -> ApplyResult:
    """Unfold (unfolding families) or generate reco rows (resolution, gan, flow) into ``out``."""
    if not bundles:
        raise ConfigError("no model to apply")
    out_path = Path(out).absolute()
    _check_out(out_path, overwrite)
    kind = bundles[0].kind
    if any(b.kind != kind for b in bundles):
        raise ConfigError("ensemble members are of different kinds (unfolding vs generative)")
    prov = {
        "inputs": {"source": inputs.source, "kind": inputs.kind, "split": inputs.split},
        "checksums": inputs.checksums,
        "models": [b.info for b in bundles],
        **(provenance or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_path.name}.tmp-", dir=out_path.parent))
    try:
        if kind == "unfold":
            from jobs.apply.outputs import write_unfolding
            from jobs.apply.unfold import unfold_events

            u = unfold_events(
                bundles, inputs, bootstrap=bootstrap, seed=seed, prior_iterations=prior_iterations
            )
            files = write_unfolding(u, tmp, title)
            result = ApplyResult(kind, out_path, files, dict(u.metrics), prov, unfolding=u)
            prov["settings"] = u.settings
            prov["counts"] = u.counts
        else:
            from jobs.apply.generate import FORMATS, generate_events, write_generated

            if fmt not in FORMATS:
                raise ConfigError(f"--format {fmt!r}: choose from {list(FORMATS)}")
            if len(bundles) > 1:
                raise ConfigError("--ensemble applies to unfolding models only")
            g = generate_events(bundles[0], inputs, seed=seed)
            files = write_generated(g, tmp, fmt, title)
            result = ApplyResult(kind, out_path, files, dict(g.metrics), prov, generated=g)
            prov["settings"] = {"seed": seed, "format": fmt}
        (tmp / "apply.json").write_text(json.dumps(prov, indent=1, sort_keys=True, default=str))
        files.append(tmp / "apply.json")
        if before_install is not None:
            before_install(tmp, result)
        if out_path.exists():  # overwrite: the old output goes only once the new one is complete
            shutil.rmtree(out_path)
        os.replace(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.files = [out_path / p.relative_to(tmp) for p in files]
    return result


def summary_lines(result: ApplyResult) -> list[str]:
    """What ``hepscan apply`` prints; with truth the last line is ``chi2_ndf=<value>``."""
    m = result.metrics
    lines: list[str] = []
    if result.kind == "unfold":
        u = result.unfolding
        lines.append(
            f"unfolded {int(m['events'])} events into {len(u.unfolded)} bins of {u.quantity} "
            f"(bootstrap {u.settings['bootstrap']}, ensemble {u.settings['ensemble']}, "
            f"prior iterations {u.settings['prior_iterations']})"
        )
        lines.append(
            "mean relative error: bootstrap {:.4f}, Poisson-only {:.4f}, ensemble {:.4f}".format(
                m["mean_rel_stderr_bootstrap"],
                m["mean_rel_stderr_poisson"],
                m["mean_rel_stderr_ensemble"],
            )
        )
        if u.truth is not None:
            lines.append(
                f"{'method':10s} {'chi2/ndf':>10s} {'(Poisson)':>10s} {'KS p':>8s} {'AD p':>8s}"
            )
            rows = [("ML", "")] + [
                (n.upper() if n == "ibu" else n.title(), f"{n}_") for n in u.baselines
            ]
            for label, pre in rows:
                lines.append(
                    f"{label:10s} {_f(m.get(pre + 'chi2_ndf')):>10s} "
                    f"{_f(m.get(pre + 'chi2_ndf_poisson')):>10s} {_f(m.get(pre + 'ks')):>8s} "
                    f"{_f(m.get(pre + 'ad')):>8s}"
                )
            for k in range(1, len(u.iterations)):
                lines.append(f"prior iteration {k}: chi2/ndf {_f(m.get(f'chi2_ndf_iter{k}'))}")
        lines.append(f"wrote {result.out}")
        if u.truth is not None:
            lines.append(f"chi2_ndf={m['chi2_ndf']:.6g}")
        return lines
    what = "scored" if result.kind == "score" else "generated"
    lines.append(f"{what} {int(m['events'])} rows -> {result.files[0]}")
    for key in sorted(m):
        if key.startswith("w1_") or key in ("auc", "efficiency", "rejection_at_50"):
            lines.append(f"{key} = {_f(m[key])}")
    lines.append(f"wrote {result.out}")
    return lines


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan"
    return f"{float(v):.4g}"
