"""The hadronic-recoil regression (issue 13, item 3): the ``recoil`` sample, its preprocessing
(``kind: recoil``, ``regression`` targets), the scan config, the recoil metrics and study 9's
fast mode on a real simulated sample.

Run: ``python -m pytest -q tests/test_recoil.py``
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies import common, recoil_regression
from jobs.simulate import simulate
from models.errors import ConfigError
from models.metrics import recoil_scores

REPO = Path(__file__).resolve().parents[1]


def test_recoil_scores_on_known_vectors() -> None:
    truth = np.array([[10.0, 0.0], [0.0, 20.0], [-30.0, 0.0], [0.0, 0.0]])
    # 0.5 x truth plus a perpendicular offset of +-1: response 0.5, sigma_perp 1
    perp = np.array([[0.0, 1.0], [-1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    s = recoil_scores(0.5 * truth + perp, truth)  # the zero-truth row is skipped
    assert s["response"] == pytest.approx(0.5)
    assert s["response_bias"] == pytest.approx(0.5)
    u_perp = np.array([1.0, 1.0, -1.0])
    assert s["resolution_perp"] == pytest.approx(np.std(u_perp))
    assert s["resolution_par"] == pytest.approx(np.std(-0.5 * np.array([10.0, 20.0, 30.0])))
    assert s["resolution_perp_corr"] == pytest.approx(np.std(u_perp) / 0.5)
    assert recoil_scores(truth, truth)["resolution_perp"] == pytest.approx(0.0)


def test_sample_and_preprocess_frame(tmp_path: Path) -> None:
    from jobs.preprocess import preprocess

    files = simulate("recoil", 4000, 2, 3, tmp_path / "raw", progress=False)
    again = simulate("recoil", 4000, 2, 3, tmp_path / "raw2", progress=False)
    a = common.read_branches(files, ["truth_pt", "truth_ux", "truth_uy", "pf_ux", "npv"])
    b = common.read_branches(again, ["truth_pt", "pf_ux"])
    np.testing.assert_array_equal(a["pf_ux"], b["pf_ux"])  # seeded
    np.testing.assert_allclose(np.hypot(a["truth_ux"], a["truth_uy"]), a["truth_pt"], rtol=1e-5)
    assert 20 < a["npv"].mean() < 36  # 1 + Poisson(0.85 mu), <mu> = 32
    with pytest.raises(ConfigError, match="mass_range"):
        simulate("recoil", 10, 1, 1, tmp_path / "x", mass_range=(1.0, 2.0), progress=False)

    data = tmp_path / "shards"
    cfg = REPO / "configs" / "preprocess_recoil.yaml"
    preprocess(cfg, data, inputs=[str(f) for f in files], workers=1, overwrite=True)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["regression"] == {"target": ["truth_upar", "truth_uperp"]}
    split = recoil_regression.load_split(data, "train")
    t, u = split["target"], split["reco_u"]
    assert (u >= 0).all() and len(u) > 2500
    # the truth, rotated into the raw-recoil frame, keeps its length: the boson pT
    assert np.hypot(t[:, 0], t[:, 1]).max() <= 300.0 + 1e-3
    # along the raw recoil the true recoil is mostly positive; across it, symmetric
    assert np.mean(t[:, 0] > 0) > 0.75
    assert abs(np.mean(t[:, 1])) < 0.1 * np.std(t[:, 1])


def test_scan_config_is_valid() -> None:
    from scan.config import load_scan_config

    cfg = load_scan_config(REPO / "configs" / "regression_recoil.yaml")
    assert cfg.family == "regression" and cfg.metrics == ["resolution_perp_corr"]
    with pytest.raises(ConfigError, match="response"):
        load_scan_config(
            REPO / "configs" / "regression_recoil.yaml",
            {"objective": {"metric": "response", "mode": "max"}},
        )


def _pooled(rows: list[dict[str, float]], key: str) -> float:
    return float(np.average([r[key] for r in rows], weights=[r["n"] for r in rows]))


@pytest.mark.slow  # ~15 s alone (simulate 40k, preprocess, 10 epochs)
def test_recoil_regression_fast(tmp_path: Path) -> None:
    out = tmp_path / "s7"
    res = recoil_regression.run(out, fast=True, cache_dir=tmp_path / "cache")
    raw, lin, reg = (res["integrated"][m] for m in recoil_regression.METHODS)
    # the sample: response well below 1, rising with pT; resolution growing with pile-up
    assert raw["response"] < 0.85
    raw_pt = res["vs_pt"]["raw"]
    assert raw_pt[-1]["response"] > raw_pt[0]["response"] + 0.08
    raw_pv = res["vs_npv"]["raw"]
    assert raw_pv[-2]["resolution_perp"] > 1.3 * raw_pv[0]["resolution_perp"]
    # the regression: sigma(u_perp) at least 25 % below the raw recoil's (0.54 x measured),
    # also response-corrected and below the linear calibration; sigma(u_par) 15 % below raw
    assert reg["resolution_perp"] < 0.75 * raw["resolution_perp"]
    assert reg["resolution_perp_corr"] < 0.75 * raw["resolution_perp_corr"]
    assert reg["resolution_perp"] < lin["resolution_perp"]
    assert reg["resolution_par"] < 0.85 * raw["resolution_par"]
    # above 50 GeV the regression's response is within 0.08 of 1, the raw recoil's is not
    assert abs(reg[f"response_pt{recoil_regression.HIGH_PT:g}"] - 1.0) < 0.08
    assert raw[f"response_pt{recoil_regression.HIGH_PT:g}"] < 0.88
    # better than raw in every pile-up bin
    for r_reg, r_raw in zip(res["vs_npv"]["regression"], raw_pv, strict=True):
        assert r_reg["resolution_perp"] < r_raw["resolution_perp"]
    assert _pooled(res["vs_pt"]["regression"], "n") == _pooled(raw_pt, "n")
    md = (out / "table.md").read_text()
    assert md.startswith("# Study 9") and "| regression |" in md
    assert (out / "recoil_vs_pt.png").stat().st_size > 10_000
    assert (out / "recoil_vs_pileup.png").stat().st_size > 10_000
    rows = common.read_csv(out / "table_0.csv")
    assert [r["Method"] for r in rows] == list(recoil_regression.METHODS)
    assert not list(tmp_path.glob(".s7.tmp-*"))
