"""``hepscan apply``: the best model of a scan (or a registered one) applied to events.

.. code-block:: bash

    hepscan apply scans/zll --split test --out results/zll             # best trial of a scan
    hepscan apply scans/zll --ensemble 3 --bootstrap 200 --out results/zll-ens
    hepscan apply models:/demo_unfold_zll/1 --tracking-uri sqlite:///scans/zll/mlflow.db \\
        --input data/other --out results/other
    hepscan apply models:/demo_unfold_zll@champion --input 'files/*.root' --out results/data
    hepscan apply runs:/<run id>/model --input truth.parquet --format root --out fastsim
    hepscan apply scans/zll/tune/trial_x/checkpoint_000007 --out results/x   # a checkpoint

.. code-block:: python

    from scan import apply
    result = apply("scans/zll", "results/zll", split="test", prior_iterations=1)
    result.metrics["chi2_ndf"], result.files

SOURCE is a scan directory (its best trial's checkpoint; ``--ensemble K``: the K best), an
MLflow URI (``runs:/…``, ``models:/NAME/VERSION``, ``models:/NAME@alias``; ``--ensemble K``:
that version and the next-best versions registered by the same scan), a training checkpoint
(``best.pt``/``last.pt`` or their directory) or a model bundle directory. The computation and
the files written are described in :mod:`jobs.apply`.

Every application is an MLflow run of experiment ``NAME-apply`` (NAME: the registered model,
else the scan) tagged with the model URI/version, trial and scan, with the inputs' checksums,
the metrics and every output file. The tracking store is the scan's for a scan directory,
otherwise ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` (without either, a checkpoint is
applied without a run). A run whose application fails ends FAILED; the output directory then
does not exist.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from models.errors import ConfigError, InputError

__all__ = ["Source", "apply", "apply_command", "resolve_source"]


@dataclass
class Source:
    """Models resolved from a SOURCE argument, and where their application is tracked."""

    bundles: list[Any]  # models.bundle.ModelBundle
    refs: list[dict[str, Any]]  # per model: uri, name, version, trial_id, run_id
    tracking_uri: str | None
    experiment: str
    description: str
    _tmp: list[Any] = field(default_factory=list, repr=False)


def _is_uri(s: str) -> bool:
    return s.startswith(("runs:/", "models:/"))


def _from_scan(d: Path, k: int, tracking_uri: str | None) -> Source:
    from jobs.apply import bundle_from_checkpoint
    from scan.publish import published_models, ranked_checkpoints, registered_name
    from scan.report import collect_result
    from scan.state import TUNE_DIR, load_saved_config, tracking_uri_of

    cfg = load_saved_config(d)
    if not (d / TUNE_DIR).exists():
        raise InputError(f"{d}: the scan has no finished trial (it has not started any)")
    result = collect_result(cfg, d)
    top = ranked_checkpoints(result, k)
    if not top:
        raise InputError(
            f"{d}: the scan has no finished trial with a checkpoint that reported "
            f"{result.objectives[0][0] if result.objectives else 'its objective'}"
        )
    if len(top) < k:
        raise ConfigError(f"--ensemble {k}: the scan {d} has only {len(top)} usable trial(s)")
    published = {m["trial_id"]: m for m in published_models(d)}
    bundles, refs = [], []
    for rank, trial_id, ckpt, metrics in top:
        info = {"scan_name": cfg.name, "scan_dir": str(d), "trial_id": trial_id, "rank": rank}
        bundles.append(bundle_from_checkpoint(ckpt, info={**info, "metrics": metrics}))
        pub = published.get(trial_id, {})
        refs.append(
            {
                "uri": pub.get("model_uri") or str(ckpt),
                "name": pub.get("name"),
                "version": pub.get("version"),
                "trial_id": trial_id,
                "run_id": pub.get("run_id"),
            }
        )
    name = registered_name(cfg) or cfg.name
    return Source(bundles, refs, tracking_uri or tracking_uri_of(d), f"{name}-apply", f"scan {d}")


def _from_uri(uri: str, k: int, tracking_uri: str | None) -> Source:
    from models.bundle import ModelBundle
    from tracking.model import MODEL_NAME, TAG_MODEL_RANK, TAG_PARENT, download_bundle
    from tracking.model import resolve_model_uri as resolve

    if tracking_uri is None:
        raise ConfigError(f"{uri}: an MLflow URI needs --tracking-uri (or MLFLOW_TRACKING_URI)")
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
        uri = f"{uri.rstrip('/')}/{MODEL_NAME}"
    first = resolve(tracking_uri, uri)
    refs = [first]
    if k > 1:
        if first["name"] is None:
            raise ConfigError("--ensemble needs a scan directory or a models:/ URI")
        from tracking.model import _registry_client

        client = _registry_client(tracking_uri)
        parent = first["tags"].get(TAG_PARENT)
        others = [
            mv
            for mv in client.search_model_versions(f"name = '{first['name']}'")
            if str(mv.version) != first["version"] and (mv.tags or {}).get(TAG_PARENT) == parent
        ]
        others.sort(key=lambda mv: (int((mv.tags or {}).get(TAG_MODEL_RANK, 1e9)), int(mv.version)))
        if len(others) < k - 1:
            raise ConfigError(
                f"--ensemble {k}: {first['name']} has {len(others) + 1} version(s) from the "
                "same scan (register them with --register-top K)"
            )
        refs += [resolve(tracking_uri, f"models:/{mv.name}/{mv.version}") for mv in others[: k - 1]]
    tmp = tempfile.TemporaryDirectory(prefix="hepscan-model-")
    bundles = []
    for i, ref in enumerate(refs):
        path = download_bundle(tracking_uri, ref["uri"], Path(tmp.name) / str(i))
        bundles.append(ModelBundle.load(path))
        ref["trial_id"] = bundles[-1].info.get("trial_id")
    name = first["name"] or bundles[0].info.get("scan_name") or "hepscan"
    return Source(bundles, refs, tracking_uri, f"{name}-apply", uri, [tmp])


def _from_path(p: Path, k: int, tracking_uri: str | None) -> Source:
    from jobs.apply import bundle_from_checkpoint
    from models.bundle import BUNDLE_FILE, ModelBundle

    if k > 1:
        raise ConfigError("--ensemble needs a scan directory or a models:/ URI")
    if (p / BUNDLE_FILE).exists():
        bundle = ModelBundle.load(p)
    else:
        bundle = bundle_from_checkpoint(p, info={"source": str(p)})
    name = bundle.info.get("scan_name") or "hepscan"
    ref = {"uri": str(p), "name": None, "version": None, "trial_id": bundle.info.get("trial_id")}
    return Source([bundle], [ref], tracking_uri, f"{name}-apply", str(p))


def resolve_source(source: str, *, ensemble: int = 1, tracking_uri: str | None = None) -> Source:
    """The model(s) SOURCE names (see the module docstring); errors name SOURCE."""
    from scan.state import CONFIG_FILE

    if ensemble < 1:
        raise ConfigError(f"--ensemble must be >= 1, got {ensemble}")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if _is_uri(source):
        return _from_uri(source, ensemble, uri)
    p = Path(source).expanduser()
    if (p / CONFIG_FILE).exists():
        return _from_scan(p.absolute(), ensemble, tracking_uri)
    if p.exists():
        return _from_path(p, ensemble, uri)
    raise InputError(
        f"{source}: not a scan directory, checkpoint, model bundle or MLflow URI "
        "(runs:/…, models:/NAME/VERSION, models:/NAME@alias)"
    )


def _inputs_digest(checksums: dict[str, str]) -> str:
    text = "\n".join(f"{Path(k).name}:{v}" for k, v in sorted(checksums.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply(
    source: str,
    out: str | os.PathLike[str],
    *,
    inputs: Sequence[str] | None = None,
    split: str | None = None,
    config: str | os.PathLike[str] | None = None,
    bootstrap: int = 100,
    ensemble: int = 1,
    prior_iterations: int = 0,
    fmt: str = "parquet",
    seed: int = 0,
    tracking_uri: str | None = None,
    track: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> Any:
    """Apply SOURCE's model(s) to events and write ``out``; returns a
    :class:`jobs.apply.ApplyResult` (``metrics``, ``files``, ``provenance``)."""
    from jobs.apply import apply_bundles, load_inputs
    from jobs.apply.run import _check_out

    out_path = Path(out).absolute()
    _check_out(out_path, overwrite)
    src = resolve_source(source, ensemble=ensemble, tracking_uri=tracking_uri)
    try:
        for b in src.bundles:
            b.build()  # an unimportable family or weights that do not fit fail here
        data = load_inputs(src.bundles[0], inputs, split=split, config=config, workers=workers)
        for b in src.bundles:
            b.inputs(data.columns, data.source)  # missing column, NaN: before any run starts
            if b.kind == "unfold":
                b.reco_bin(data.columns, data.source)
        first = src.refs[0]
        provenance = {"source": source, "model": first, "ensemble_models": src.refs}
        kwargs: dict[str, Any] = {
            "bootstrap": bootstrap,
            "seed": seed,
            "prior_iterations": prior_iterations,
            "fmt": fmt,
            "title": src.experiment.removesuffix("-apply"),
            "provenance": provenance,
            "overwrite": overwrite,
        }
        if not (track and src.tracking_uri):
            return apply_bundles(src.bundles, out_path, data, **kwargs)
        from tracking.model import ApplyRun, log_dataset

        tags = {
            "mlflow.runName": f"apply-{Path(data.source).name}",
            "hepscan.source": source,
            "hepscan.model_uri": first["uri"],
            "hepscan.model_name": first.get("name"),
            "hepscan.model_version": first.get("version"),
            "hepscan.trial_id": first.get("trial_id"),
            "hepscan.ensemble": ",".join(str(r["uri"]) for r in src.refs),
            "hepscan.inputs_digest": _inputs_digest(data.checksums),
            "hepscan.out": str(out_path),
        }
        params = {
            "input": data.source,
            "input_kind": data.kind,
            "split": data.split,
            "bootstrap": bootstrap,
            "ensemble": ensemble,
            "prior_iterations": prior_iterations,
            "seed": seed,
            "format": fmt,
            "rows": data.rows,
        }
        checksums = {  # MLflow param names: alphanumerics and _-. :/ only
            "sha256." + re.sub(r"[^\w\-. :/]", "_", Path(k).name): v
            for k, v in list(data.checksums.items())[:50]
        }
        with ApplyRun(src.tracking_uri, src.experiment, tags) as run:
            assert run.run_id is not None

            def log_run(tmp: Path, result: Any) -> None:
                run.log(params={**params, **checksums}, metrics=result.metrics, artifacts_dir=tmp)
                log_dataset(
                    str(src.tracking_uri),
                    [str(run.run_id)],
                    name=Path(data.source).name,
                    digest=_inputs_digest(data.checksums),
                    source=data.source.split(" (+")[0],
                    schema={c: str(v.dtype) for c, v in data.columns.items()},
                    context="apply",
                )

            result = apply_bundles(src.bundles, out_path, data, before_install=log_run, **kwargs)
            result.extra["run_id"] = run.run_id
            result.extra["tracking_uri"] = src.tracking_uri
        return result
    finally:
        for t in src._tmp:
            t.cleanup()


@click.command("apply")
@click.argument("source", metavar="SOURCE")
@click.option("--out", required=True, type=click.Path(), help="output directory (must not exist)")
@click.option("--input", "inputs", multiple=True, help="dataset dir, Parquet or ROOT files")
@click.option("--split", default=None, help="train|validation|test|all (dataset/ROOT inputs)")
@click.option("--config", default=None, help="preprocessing config for ROOT inputs")
@click.option("--bootstrap", default=100, show_default=True, help="Poisson bootstrap replicas")
@click.option("--ensemble", default=1, show_default=True, help="the K best trials / versions")
@click.option("--prior-iterations", default=0, show_default=True, help="iterative prior update")
@click.option("--format", "fmt", default="parquet", type=click.Choice(["parquet", "root"]))
@click.option("--seed", default=0, show_default=True, help="bootstrap / sampling seed")
@click.option("--tracking-uri", default=None, help="MLflow store (default: the scan's)")
@click.option("--no-track", is_flag=True, help="no MLflow run")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
@click.option("--workers", default=None, type=int, help="Dask workers for ROOT inputs")
def apply_command(
    source: str,
    out: str,
    inputs: tuple[str, ...],
    split: str | None,
    config: str | None,
    bootstrap: int,
    ensemble: int,
    prior_iterations: int,
    fmt: str,
    seed: int,
    tracking_uri: str | None,
    no_track: bool,
    overwrite: bool,
    workers: int | None,
) -> None:
    """Apply a scan's best model (or a registered one) to events: unfold or fast-simulate."""
    from jobs.apply import summary_lines

    result = apply(
        source,
        out,
        inputs=list(inputs) or None,
        split=split,
        config=config,
        bootstrap=bootstrap,
        ensemble=ensemble,
        prior_iterations=prior_iterations,
        fmt=fmt,
        seed=seed,
        tracking_uri=tracking_uri,
        track=not no_track,
        overwrite=overwrite,
        workers=workers,
    )
    lines = summary_lines(result)
    if "run_id" in result.extra:
        lines.insert(
            -1 if lines[-1].startswith("chi2_ndf=") else len(lines),
            f"MLflow run: {result.extra['run_id']}",
        )
    for line in lines:
        click.echo(line)
    sys.stdout.flush()
