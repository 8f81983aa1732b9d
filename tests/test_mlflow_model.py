"""The best model of a scan in MLflow: logged pyfunc model, Model Registry versions and tags,
dataset inputs, loading in a fresh interpreter, resume, ``register: false`` / another name.

One module-scoped tiny scan (2 trials, 2 epochs, ``register_top: 2``) on a real sqlite store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.train_synthetic import write_unfold_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
NAME = "mlm_scan"


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    import ray

    from scan import launch
    from scan.driver import _init_ray

    dataset = write_unfold_dataset(tmp_path_factory.mktemp("ds") / "zll", rows=1200, n_bins=5)
    os.environ["HEPSCAN_RAY_CPUS"] = "2"
    started = _init_ray(None, REPO, verbose=0)
    d = tmp_path_factory.mktemp("scan") / "scan"
    cfg = {
        "name": NAME,
        "dataset": str(dataset),
        "family": "unfold_bins",
        "search_space": {"alpha": ["loguniform", 0.5, 4.0]},
        "fixed": {"batch_size": 128, "lr": 0.003, "patience": 0},
        "objective": {"metric": "chi2_ndf", "mode": "min"},
        "scheduler": "none",
        "searcher": "random",
        "num_trials": 2,
        "max_epochs": 2,
        "seed": 2,
        "register_top": 2,
    }
    try:
        result = launch(cfg, scan_dir=str(d), verbose=0)
        yield d, result
    finally:
        if started:
            ray.shutdown()


def client_of(d: Path) -> Any:
    from tracking.model import _registry_client

    return _registry_client(f"sqlite:///{d / 'mlflow.db'}")


def test_best_models_are_logged_and_registered_with_links(scan: tuple[Path, Any]) -> None:
    from scan.publish import published_models
    from tracking.store import _git_sha

    d, result = scan
    client = client_of(d)
    versions = sorted(
        client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version)
    )
    assert [str(v.version) for v in versions] == ["1", "2"]
    published = published_models(d)
    ranked = list(result.ranked()["trial_id"])
    assert [m["trial_id"] for m in published] == ranked[:2]
    assert published[0]["trial_id"] == result.best_trial_id
    for v, m in zip(versions, published, strict=True):
        tags = v.tags
        assert tags["hepscan.parent_run_id"] == result.parent_run_id
        assert tags["hepscan.trial_id"] == m["trial_id"]
        assert tags["hepscan.rank"] == str(m["rank"])
        assert tags["hepscan.git_sha"] == _git_sha()
        assert v.run_id == m["run_id"]
        run = client.get_run(v.run_id)
        assert run.data.tags["trial_id"] == m["trial_id"]
        assert run.info.status == "FINISHED"  # logging the model did not reopen the trial
        assert float(tags["hepscan.best_chi2_ndf"]) == pytest.approx(
            result.trials.set_index("trial_id").loc[m["trial_id"], "best_chi2_ndf"]
        )
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["hepscan.best_model_uri"] == f"models:/{NAME}/1"
    assert "hepscan.publish_error" not in parent.data.tags


def test_dataset_is_an_input_of_the_parent_and_every_trial(scan: tuple[Path, Any]) -> None:
    from jobs.manifest import load_manifest
    from models.bundle import manifest_digest

    d, result = scan
    client = client_of(d)
    manifest = load_manifest(json.loads((d / "scan.json").read_text())["dataset"])
    runs = [client.get_run(result.parent_run_id)] + [
        client.get_run(r) for r in result.trials["run_id"]
    ]
    assert len(runs) == 3
    for run in runs:
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "synthetic_zll"
        assert ds.dataset.digest == manifest_digest(manifest.raw)
        assert str(manifest.root.resolve()) in ds.dataset.source
        assert "feat_f0" in ds.dataset.schema and "truth_bin" in ds.dataset.schema
        assert [t.value for t in ds.tags] == ["training"]


FRESH = r"""
import json, sys
import mlflow, numpy as np, pandas as pd
uri = sys.argv[1]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
model = mlflow.pyfunc.load_model("models:/NAME/1")
frame = pd.DataFrame(json.loads(sys.argv[2]))
pred = model.predict(frame)
names = [n for n in ("ray", "scan", "horovod", "jobs") if n in sys.modules]
print(json.dumps({"columns": list(pred.columns), "values": pred.to_numpy().tolist(),
                  "modules": names, "inputs": [c.name for c in model.metadata.signature.inputs]}))
""".replace("NAME", NAME)


def test_registered_model_predicts_in_a_fresh_interpreter(scan: tuple[Path, Any]) -> None:
    from jobs.apply import bundle_from_checkpoint
    from scan.publish import published_models

    d, _ = scan
    bundle = bundle_from_checkpoint(published_models(d)[0]["checkpoint"])
    rng = np.random.default_rng(0)
    m = rng.uniform(66, 114, 20)
    frame = {
        "f0": m.tolist(),
        "f1": ((m - 91.0) ** 2).tolist(),
        "f2": [0.1] * 20,
        "f3": [-0.3] * 20,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, f"sqlite:///{d / 'mlflow.db'}", json.dumps(frame)],
        cwd=d.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    assert out["inputs"] == ["f0", "f1", "f2", "f3"]
    assert out["columns"] == [f"p_{k}" for k in range(5)]
    values = np.asarray(out["values"])
    np.testing.assert_allclose(values.sum(axis=1), 1.0, rtol=1e-5)
    expected = bundle.predict(frame)
    np.testing.assert_allclose(values, np.stack(list(expected.values()), axis=1), rtol=1e-5)


def test_resume_of_a_finished_scan_does_not_register_again(scan: tuple[Path, Any]) -> None:
    from scan import resume
    from scan.publish import published_models

    d, _ = scan
    before = published_models(d)
    resume(d, verbose=0)
    assert published_models(d) == before
    assert len(client_of(d).search_model_versions(f"name = '{NAME}'")) == 2


def test_register_false_logs_without_registering_and_another_name(
    scan: tuple[Path, Any], tmp_path: Path
) -> None:
    from scan.publish import publish
    from scan.state import load_saved_config
    from tracking.runs import ScanTracker

    d, result = scan
    cfg = load_saved_config(d)
    tracker = ScanTracker(d)
    (d / "models.json").rename(tmp_path / "models.json")  # publish afresh
    try:
        off = publish(
            cfg.model_copy(update={"register_model": False, "register_top": 1}), result, tracker
        )
        assert off[0]["name"] is None and off[0]["model_uri"].startswith("models:/m-")
        assert len(client_of(d).search_model_versions(f"name = '{NAME}'")) == 2
        other = publish(cfg.model_copy(update={"register_model": "zll_unfolder"}), result, tracker)
        assert [m["model_uri"] for m in other] == [
            "models:/zll_unfolder/1",
            "models:/zll_unfolder/2",
        ]
    finally:
        (tmp_path / "models.json").replace(d / "models.json")
