"""The driver of ``hepscan preprocess``: validate, start Dask, run the partitions, install.

``preprocess(config, out)`` runs the pipeline described in :mod:`jobs.preprocess` and returns
the path of ``out/manifest.json``. Output goes into a temp dir next to ``out`` that is renamed
at the end and removed on any error (and any parent directories it created with it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jobs.manifest import MANIFEST_NAME, SPLITS, sha256_file, write_manifest
from jobs.preprocess.build import build_manifest, fit, plot_name, plot_truth_reco
from jobs.preprocess.config import load_config
from jobs.preprocess.partition import (
    Task,
    WriteSpec,
    partition_stats,
    partitions,
    process_partition,
    write_partition,
)
from jobs.preprocess.plan import InputFile, Plan, expand, make_plan, validate_inputs
from models.errors import ConfigError, InputError, OutputError, require

__all__ = ["PHASE", "local_cluster", "preprocess"]

log = logging.getLogger(__name__)


# log records of the pipeline's phases carry ``record.__dict__[PHASE] = (name, seconds since
# the start of the run)``: benchmarks/preprocess.py prints them as its breakdown
PHASE = "hepscan_phase"


def _phase(t0: float, name: str, detail: str = "") -> None:
    dt = time.perf_counter() - t0
    log.info("preprocess: %s after %.2f s%s", name, dt, detail, extra={PHASE: (name, dt)})


def preprocess(
    config: str | os.PathLike[str] | dict[str, Any],
    out: str | os.PathLike[str],
    *,
    inputs: list[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Run the pipeline described in the module docstring; returns ``out/manifest.json``.

    ``inputs`` (glob patterns, relative to the current directory) replace the config's
    ``files``; ``scheduler`` is the address of a running Dask scheduler (otherwise a local
    cluster of ``workers`` single-threaded processes runs for the call); ``overwrite`` replaces
    an existing ``out`` once the new output is complete.
    """
    t0 = time.perf_counter()
    cfg, base, source = load_config(config)
    if workers is not None and workers < 1:
        raise ConfigError(f"option 'workers' must be >= 1, got {workers}")
    plan = make_plan(cfg, source)
    out_path = Path(out)
    _check_out(out_path, overwrite)
    if inputs:
        pairs = [p for pat in inputs for p in expand([pat], Path.cwd(), f"--input {pat!r}")]
        files = sorted(dict(pairs).items())
        patterns = list(inputs)
    else:
        files = expand(cfg.files, base, "files")
        patterns = list(cfg.files)
    input_files, plan = validate_inputs(plan, files)
    if sum(f.entries for f in input_files) == 0:
        raise InputError(f"{input_files[0].display}: tree {cfg.tree!r} has no entries")
    _phase(t0, "inputs validated")

    tmp, created = _prepare_out(out_path)
    try:
        manifest = _run(plan, input_files, patterns, tmp, scheduler, workers, t0)
        write_manifest(tmp / MANIFEST_NAME, manifest)
        _install(tmp, out_path)
        _phase(t0, "installed")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        if isinstance(exc, OSError):
            raise OutputError(f"{out_path}: writing the output failed ({exc})") from exc
        raise
    return out_path / MANIFEST_NAME


def _install(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)


def _run(
    plan: Plan,
    files: list[InputFile],
    patterns: list[str],
    tmp: Path,
    scheduler: str | None,
    workers: int | None,
    t0: float,
) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    cfg = plan.cfg
    pool = ThreadPoolExecutor(max_workers=min(2, len(files)))
    try:
        # checksums overlap the Dask work unless the event ids need them
        digest_futures = [pool.submit(sha256_file, f.path) for f in files]
        keys = [0] * len(files)
        if not plan.eid_branches:
            keys = [int(d.result()[:16], 16) for d in digest_futures]
        parts = partitions(files)
        index = {f.path: k for k, f in enumerate(files)}
        tasks = [Task(i, f, a, b, keys[index[f.path]], plan) for i, (f, a, b) in enumerate(parts)]
        for split in SPLITS:
            (tmp / split).mkdir()

        with _dask_client(scheduler, workers, len(tasks)) as client:
            _phase(t0, "cluster ready", f" ({len(tasks)} partitions)")
            futures = [client.submit(process_partition, t, pure=False) for t in tasks]
            try:
                stats = client.gather(
                    [client.submit(partition_stats, fu, plan, pure=False) for fu in futures]
                )
                _phase(t0, "read + select")
                fit_ = fit(plan, stats, files)
                plot = plot_name(plan)
                plot_future = (
                    pool.submit(
                        plot_truth_reco,
                        tmp / plot,
                        plan,
                        np.asarray(plan.edges),
                        fit_["hist"]["truth"],
                        fit_["hist"]["reco"],
                    )
                    if plot
                    else None
                )
                first: list[list[int]] = []
                nxt = [0] * len(SPLITS)
                for s in stats:
                    first.append(list(nxt))
                    for k, rows in enumerate(s["rows"]):
                        nxt[k] += -(-rows // cfg.shard_rows)
                written = client.gather(
                    [
                        client.submit(
                            write_partition,
                            fu,
                            plan,
                            WriteSpec(
                                root=str(tmp),
                                first_shard=tuple(first[i]),
                                mean=tuple(fit_["mean"]),
                                std=tuple(fit_["std"]),
                                res_edges=fit_["res_edges"],
                            ),
                            pure=False,
                        )
                        for i, fu in enumerate(futures)
                    ]
                )
                _phase(t0, "shards written")
            finally:
                client.cancel(futures)
        _phase(t0, "client closed")
        digests = [d.result() for d in digest_futures]
        if plot_future is not None:
            plot_future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    _phase(t0, "checksums + plot")

    return build_manifest(plan, files, digests, patterns, stats, written, fit_, plot)


@contextlib.contextmanager
def _dask_client(scheduler: str | None, workers: int | None, n_parts: int) -> Iterator[Any]:
    Client = require("distributed").Client

    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler!r}: cannot connect ({exc})") from None
        except TypeError as exc:
            if "ssl_context" not in str(exc):
                raise
            raise ConfigError(
                f"--scheduler {scheduler!r}: a tls:// scheduler needs the job's TLS credentials "
                "(DASK_DISTRIBUTED__COMM__TLS__*: see jobs/preprocess/security.py)"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(workers or max(1, min(os.cpu_count() or 1, n_parts)))
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def local_cluster(n_workers: int) -> Any:
    """The Dask ``LocalCluster`` a run without ``--scheduler`` starts: ``n_workers``
    single-threaded worker processes (benchmarks/preprocess.py starts the same one)."""
    dask = require("dask")
    distributed = require("distributed")

    with dask.config.set(
        {
            # distributed's default MALLOC_TRIM_THRESHOLD_ also pins glibc's mmap threshold, so
            # every large numpy temporary becomes an mmap + page faults: measured 2x the CPU
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
            # the statistical profiler samples every worker thread each 10 ms (for the
            # dashboard); the nanny passes this config on to its worker
            "distributed.worker.profile.enabled": False,
            # every scheduler, nanny and worker checks its event loop's health each 20 ms by
            # default: 0.065 CPU-s/s of an idle 2-worker cluster here, 0.026 at 1 s (only the
            # "event loop blocked" warning gets coarser)
            "distributed.admin.tick.interval": "1s",
        }
    ):
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: 8787 may be taken
            silence_logs=logging.ERROR,
        )


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: output exists and is not empty (use --overwrite to replace it)")


def _prepare_out(out: Path) -> tuple[Path, list[Path]]:
    """Create the temp dir next to ``out``; returns it and the parents we created."""
    created: list[Path] = []
    parent = out.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    except OSError as exc:
        _remove_created(created)
        raise OutputError(
            f"{out}: cannot write the output directory ({exc.strerror or exc})"
        ) from None
    return tmp, created


def _remove_created(created: list[Path]) -> None:
    for d in created:  # innermost first
        with contextlib.suppress(OSError):
            d.rmdir()
