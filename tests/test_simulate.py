"""jobs/simulate: schema, determinism, physics sanity and errors of the simulated samples.

Run: .venv/bin/python -m pytest tests/test_simulate.py -q
Statistical tolerances are a few standard errors of the quantity tested, computed from the
sample itself, so a failure means the generator changed, not bad luck (seeds are fixed too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from scipy.optimize import curve_fit

from jobs.simulate import (
    GAMMA_Z,
    M_Z,
    META_KEY,
    MUON,
    RNG_BLOCK,
    DijetConfig,
    JetsConfig,
    dijet_pdf,
    simulate,
)
from models.errors import ConfigError, OutputError
from scan.cli import main

ZLL_FLAT = {
    "event_id": np.uint64,
    "pileup": np.int32,
    "truth_flavour": np.int32,
    "truth_mass": np.float32,
    "truth_pt": np.float32,
    "truth_y": np.float32,
    **{f"truth_l{i}_{v}": np.float32 for i in (1, 2) for v in ("pt", "eta", "phi")},
    "truth_l1_charge": np.int32,
    "truth_l2_charge": np.int32,
    "reco_ok": np.bool_,
    "reco_mass": np.float32,
    "nlep": np.int32,
}
ZLL_JAGGED = {
    "lep_pt": np.float32,
    "lep_eta": np.float32,
    "lep_phi": np.float32,
    "lep_charge": np.int32,
    "lep_flavour": np.int32,
    "lep_iso": np.float32,
    "lep_truth_index": np.int32,
}
JETS = {
    "event_id": np.uint64,
    **{f"{lvl}_{v}": np.float32 for lvl in ("truth", "reco") for v in ("pt", "eta", "phi", "m")},
    "reco_ok": np.bool_,
}
DIJET = {"event_id": np.uint64, "truth_mjj": np.float32, "reco_mjj": np.float32}


def read(paths: list[Path]) -> ak.Array:
    return uproot.concatenate([f"{p}:events" for p in paths])


def robust_sigma(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@pytest.fixture(scope="module")
def zll(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], ak.Array]:
    paths = simulate(
        "zll", 240_000, 3, 11, tmp_path_factory.mktemp("zll"), workers=2, progress=False
    )
    return paths, read(paths)


@pytest.fixture(scope="module")
def jets(tmp_path_factory: pytest.TempPathFactory) -> ak.Array:
    return read(simulate("jets", 300_000, 2, 12, tmp_path_factory.mktemp("jets"), progress=False))


# ---------------------------------------------------------------------------------- schema


def test_zll_files_tree_and_branch_schema(zll: tuple[list[Path], ak.Array]) -> None:
    paths, _ = zll
    assert [p.name for p in paths] == ["zll_0000.root", "zll_0001.root", "zll_0002.root"]
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".")]
    for i, path in enumerate(paths):
        with uproot.open(path) as f:
            tree = f["events"]
            assert isinstance(tree, uproot.TTree)
            assert tree.num_entries == 80_000
            assert set(tree.keys()) == set(ZLL_FLAT) | set(ZLL_JAGGED)
            arrays = tree.arrays(library="np", entry_stop=1000)
            for name, dtype in ZLL_FLAT.items():
                assert arrays[name].dtype == dtype, name
            for name, dtype in ZLL_JAGGED.items():
                assert arrays[name][0].dtype == dtype, name
            meta = json.loads(str(f[META_KEY]))
            assert (meta["sample"], meta["seed"], meta["file_index"]) == ("zll", 11, i)


def test_zll_content_is_consistent(zll: tuple[list[Path], ak.Array]) -> None:
    _, a = zll
    n = len(a)
    np.testing.assert_array_equal(ak.num(a.lep_pt).to_numpy(), a.nlep.to_numpy())
    assert set(np.unique(a.truth_flavour.to_numpy())) == {11, 13}
    assert abs(np.mean(a.truth_flavour.to_numpy() == 13) - 0.5) < 4 * 0.5 / np.sqrt(n)
    assert np.all(a.truth_l1_pt.to_numpy() >= a.truth_l2_pt.to_numpy())
    np.testing.assert_array_equal(a.truth_l1_charge.to_numpy(), -a.truth_l2_charge.to_numpy())
    ti = a.lep_truth_index
    assert set(np.unique(ak.flatten(ti).to_numpy())) == {-1, 0, 1}
    # reco_ok <=> both truth leptons are in the collection; reco_mass is 0 otherwise
    both = (ak.sum(ti == 0, axis=1) == 1) & (ak.sum(ti == 1, axis=1) == 1)
    np.testing.assert_array_equal(both.to_numpy(), a.reco_ok.to_numpy())
    ok = a.reco_ok.to_numpy()
    assert np.all(a.reco_mass.to_numpy()[~ok] == 0.0) and np.all(a.reco_mass.to_numpy()[ok] > 0)
    assert 0.3 < ok.mean() < 0.8
    # sorted by decreasing pT, inside acceptance, prompt leptons carry the event's flavour
    pt = a.lep_pt
    assert ak.all(pt[:, 1:] <= pt[:, :-1])
    assert ak.min(pt) > MUON.pt_min and ak.max(abs(a.lep_eta)) < 2.5
    prompt_flav = ak.flatten(a.lep_flavour[ti >= 0] - a.truth_flavour)
    assert np.all(prompt_flav.to_numpy() == 0)
    # fakes: Poisson mean 0.2 per event, both flavours
    n_fake = ak.sum(ti == -1, axis=None)
    assert abs(n_fake / n - 0.2) < 4 * np.sqrt(0.2 / n)
    assert abs(np.mean(a.pileup.to_numpy()) - 30.0) < 4 * np.sqrt(30.0 / n)


def test_event_ids_unique_and_encode_the_file(zll: tuple[list[Path], ak.Array]) -> None:
    paths, a = zll
    ids = a.event_id.to_numpy()
    assert ids.dtype == np.uint64 and len(np.unique(ids)) == len(ids)
    for i, path in enumerate(paths):
        with uproot.open(path) as f:
            file_ids = f["events"]["event_id"].array(library="np")
        np.testing.assert_array_equal(file_ids >> np.uint64(40), i)
        np.testing.assert_array_equal(
            file_ids & np.uint64((1 << 40) - 1), np.arange(len(file_ids), dtype=np.uint64)
        )


def test_jets_and_dijet_schema(jets: ak.Array, tmp_path: Path) -> None:
    assert set(jets.fields) == set(JETS)
    for name, dtype in JETS.items():
        assert ak.to_numpy(jets[name]).dtype == dtype, name
    (path,) = simulate("dijet", 1000, 1, 1, tmp_path, progress=False)
    with uproot.open(path) as f:
        arrays = f["events"].arrays(library="np")
    assert set(arrays) == set(DIJET)
    for name, dtype in DIJET.items():
        assert arrays[name].dtype == dtype, name


def test_importing_does_not_start_engines() -> None:
    code = (
        "import sys, jobs.simulate; "
        "print(sorted(m for m in ('uproot', 'dask', 'awkward', 'ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- determinism


def _arrays(paths: list[Path]) -> dict[str, Any]:
    a = read(paths)
    # jagged branches compared flat; nlep compares their event boundaries
    return {
        f: ak.flatten(a[f]).to_numpy() if f.startswith("lep_") else a[f].to_numpy()
        for f in a.fields
    }


def test_same_seed_same_events_regardless_of_workers_and_chunks(tmp_path: Path) -> None:
    events = 2 * RNG_BLOCK + 8000  # two RNG blocks per file: 1 or 2 chunks below
    ref = _arrays(
        simulate(
            "zll", events, 2, 5, tmp_path / "a", workers=1, chunk_size=RNG_BLOCK, progress=False
        )
    )
    again = _arrays(
        simulate("zll", events, 2, 5, tmp_path / "b", workers=2, chunk_size=10**6, progress=False)
    )
    assert ref.keys() == again.keys()
    for key in ref:
        np.testing.assert_array_equal(ref[key], again[key], err_msg=key)
    other = _arrays(simulate("zll", events, 2, 6, tmp_path / "c", progress=False))
    assert not np.array_equal(ref["truth_mass"], other["truth_mass"])
    np.testing.assert_array_equal(ref["event_id"], other["event_id"])


def test_dijet_seed_and_smearing_determinism(tmp_path: Path) -> None:
    def run(name: str, seed: int, smearing: float | None) -> dict[str, np.ndarray]:
        paths = simulate("dijet", 5000, 3, seed, tmp_path / name, smearing=smearing, progress=False)
        a = read(paths)
        return {k: a[k].to_numpy() for k in a.fields}

    a, b, c = run("a", 1, None), run("b", 1, None), run("c", 2, None)
    np.testing.assert_array_equal(a["reco_mjj"], b["reco_mjj"])
    assert not np.array_equal(a["truth_mjj"], c["truth_mjj"])
    # the smearing option changes reco only, the truth spectrum is the same draw
    wide = run("d", 1, 0.10)
    np.testing.assert_array_equal(a["truth_mjj"], wide["truth_mjj"])
    assert not np.array_equal(a["reco_mjj"], wide["reco_mjj"])


# ----------------------------------------------------------------------------- zll physics


def _rel_bw(
    m: np.ndarray, norm: float, mass: float, width: float, b0: float, b1: float
) -> np.ndarray:
    """Relativistic Breit-Wigner (peak height ``norm``) over the linear Drell-Yan continuum."""
    shape = 1.0 / ((m * m - mass * mass) ** 2 + (mass * width) ** 2)
    return norm * shape * (mass * width) ** 2 + b0 + b1 * (m - M_Z)


def test_breit_wigner_peak_and_width_recovered(zll: tuple[list[Path], ak.Array]) -> None:
    _, a = zll
    mass = a.truth_mass.to_numpy().astype(np.float64)
    edges = np.linspace(M_Z - 8.0, M_Z + 8.0, 161)
    counts, _ = np.histogram(mass, bins=edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    sigma = np.sqrt(np.maximum(counts, 1.0))
    p, cov = curve_fit(
        _rel_bw,
        centres,
        counts,
        p0=[counts.max(), 91.0, 2.0, 10.0, 0.0],
        sigma=sigma,
        absolute_sigma=True,
    )
    err = np.sqrt(np.diag(cov))
    # 240k events: sigma(mZ) ~ 5 MeV, sigma(GammaZ) ~ 12 MeV
    assert err[1] < 0.01 and err[2] < 0.02
    assert abs(p[1] - M_Z) < 4 * err[1], (p[1], err[1])
    assert abs(p[2] - GAMMA_Z) < 4 * err[2], (p[2], err[2])
    chi2 = np.sum(((counts - _rel_bw(centres, *p)) / sigma) ** 2)
    assert chi2 / (len(counts) - 5) < 1.5
    # the continuum sits under the peak: far sidebands are populated
    assert np.sum((mass > 55) & (mass < 65)) > 0.004 * len(mass)


def test_reco_mass_shows_smearing(zll: tuple[list[Path], ak.Array]) -> None:
    _, a = zll
    ok = a.reco_ok.to_numpy()
    diff = (a.reco_mass.to_numpy() - a.truth_mass.to_numpy())[ok]
    flav = a.truth_flavour.to_numpy()[ok]
    res_mu, res_e = robust_sigma(diff[flav == 13]), robust_sigma(diff[flav == 11])
    assert 0.5 < res_mu < 2.0 and res_mu < res_e
    assert abs(np.median(diff[flav == 13])) < 0.1
    assert np.median(diff[flav == 11]) < 0.0  # bremsstrahlung losses pull electrons low


def _matched_leptons(a: ak.Array) -> dict[str, np.ndarray]:
    ti = ak.flatten(a.lep_truth_index).to_numpy()
    evt = np.repeat(np.arange(len(a)), a.nlep.to_numpy())
    sel = ti >= 0
    evt, ti = evt[sel], ti[sel]

    def truth(v: str) -> np.ndarray:
        l1, l2 = a[f"truth_l1_{v}"].to_numpy(), a[f"truth_l2_{v}"].to_numpy()
        return np.where(ti == 0, l1[evt], l2[evt])

    return {
        "flavour": ak.flatten(a.lep_flavour).to_numpy()[sel],
        "reco_pt": ak.flatten(a.lep_pt).to_numpy()[sel].astype(np.float64),
        "reco_eta": ak.flatten(a.lep_eta).to_numpy()[sel],
        "iso": ak.flatten(a.lep_iso).to_numpy()[sel],
        "pileup": a.pileup.to_numpy()[evt],
        "truth_pt": truth("pt").astype(np.float64),
        "truth_eta": truth("eta"),
    }


def test_muon_pt_resolution_grows_with_pt_and_is_worse_in_endcaps(
    zll: tuple[list[Path], ak.Array],
) -> None:
    m = _matched_leptons(zll[1])
    mu = m["flavour"] == 13
    rel = m["reco_pt"] / m["truth_pt"] - 1.0
    barrel = np.abs(m["truth_eta"]) < MUON.barrel_eta
    low = (m["truth_pt"] > 25) & (m["truth_pt"] < 40)
    high = m["truth_pt"] > 80

    def res(sel: np.ndarray) -> tuple[float, float]:
        r = rel[mu & sel]
        assert len(r) > 300
        return robust_sigma(r), 1.3 * robust_sigma(r) / np.sqrt(2 * len(r))

    (bl, bl_e), (bh, bh_e) = res(barrel & low), res(barrel & high)
    (el, el_e), (eh, eh_e) = res(~barrel & low), res(~barrel & high)
    assert bh - bl > 4 * np.hypot(bl_e, bh_e)
    assert eh - el > 4 * np.hypot(el_e, eh_e)
    # endcap resolution twice the barrel one at the same pT (the detector card says x2)
    ratio = el / bl
    ratio_err = ratio * np.hypot(bl_e / bl, el_e / el)
    assert abs(ratio - 2.0) < 4 * ratio_err
    # barrel at ~32 GeV: 1 % (+) 0.01 %/GeV * pT ~ 1.05 %
    assert 0.009 < bl < 0.0115


def test_lepton_efficiency_depends_on_eta(zll: tuple[list[Path], ak.Array]) -> None:
    a = zll[1]
    ti = a.lep_truth_index
    for k, idx in (("l1", 0), ("l2", 1)):
        found = (ak.sum(ti == idx, axis=1) == 1).to_numpy()
        pt, eta = a[f"truth_{k}_pt"].to_numpy(), np.abs(a[f"truth_{k}_eta"].to_numpy())
        mu = a.truth_flavour.to_numpy() == 13
        for region, expected in (((eta < 1.1), 0.97), ((eta > 1.3) & (eta < 2.3), 0.90)):
            sel = mu & region & (pt > 25)
            eff = found[sel].mean()
            assert abs(eff - expected) < 4 * np.sqrt(expected * (1 - expected) / sel.sum()), k
        outside = mu & (eta > 2.45)
        assert outside.sum() > 100 and not found[outside].any()


def test_isolation_prompt_vs_fake_and_pileup(zll: tuple[list[Path], ak.Array]) -> None:
    a = zll[1]
    ti = ak.flatten(a.lep_truth_index).to_numpy()
    iso = ak.flatten(a.lep_iso).to_numpy()
    assert np.median(iso[ti < 0]) > 5 * np.median(iso[ti >= 0])
    m = _matched_leptons(a)
    low, high = m["iso"][m["pileup"] < 25], m["iso"][m["pileup"] > 35]
    err = np.hypot(low.std() / np.sqrt(len(low)), high.std() / np.sqrt(len(high)))
    assert high.mean() - low.mean() > 5 * err


def test_z_kinematics_plausible(zll: tuple[list[Path], ak.Array]) -> None:
    a = zll[1]
    zpt = a.truth_pt.to_numpy()
    assert 8.0 < zpt.mean() < 15.0 and np.percentile(zpt, 99.9) > 60.0
    y = a.truth_y.to_numpy()
    assert np.abs(y).max() <= 4.0 and 1.4 < y.std() < 2.0

    # the two leptons' four-momenta add back up to the Z (massive leptons, float32 storage)
    def p4(k: str) -> np.ndarray:
        pt = a[f"truth_{k}_pt"].to_numpy().astype(np.float64)
        eta = a[f"truth_{k}_eta"].to_numpy().astype(np.float64)
        phi = a[f"truth_{k}_phi"].to_numpy().astype(np.float64)
        return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)])

    s = p4("l1") + p4("l2")
    np.testing.assert_allclose(np.hypot(s[0], s[1]), zpt, rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------- jets physics


def test_jet_efficiency_central_and_forward(jets: ak.Array) -> None:
    cfg = JetsConfig()
    eta = np.abs(jets.truth_eta.to_numpy())
    ok = jets.reco_ok.to_numpy()
    assert eta.max() > 3.5
    for sel, expected in ((eta > cfg.forward_eta, 0.80), (eta < cfg.forward_eta, 0.99)):
        eff = ok[sel].mean()
        assert abs(eff - expected) < 4 * np.sqrt(expected * (1 - expected) / sel.sum())
    lost = ~ok
    for v in ("pt", "eta", "phi", "m"):
        assert np.all(jets[f"reco_{v}"].to_numpy()[lost] == 0.0)


def test_jet_response_and_resolution(jets: ak.Array) -> None:
    cfg = JetsConfig()
    ok = jets.reco_ok.to_numpy()
    pt = jets.truth_pt.to_numpy().astype(np.float64)
    reco = jets.reco_pt.to_numpy().astype(np.float64)
    fwd = np.abs(jets.truth_eta.to_numpy()) > cfg.forward_eta
    central = ok & ~fwd
    ratio = reco[central] / pt[central]
    assert abs(ratio.mean() - 0.98) < 4 * ratio.std() / np.sqrt(len(ratio))
    assert pt.min() >= 20.0 and pt.max() > 1000.0

    def sigma(sel: np.ndarray) -> tuple[float, float]:
        d = reco[sel] - 0.98 * pt[sel]
        return float(d.std()), float(d.std() / np.sqrt(2 * len(d)))

    def expected(p: float) -> float:
        return float(np.hypot(0.03 * p, 0.5 * np.sqrt(p)))

    previous = 0.0
    for lo, hi in ((30, 35), (100, 120), (300, 400)):
        band = (pt > lo) & (pt < hi)
        s_c, e_c = sigma(central & band)
        s_f, e_f = sigma(ok & fwd & band)
        # the formula at the band's mean pT, within the bin's spread of pT and 4 sigma
        mean_pt = pt[central & band].mean()
        assert abs(s_c - expected(mean_pt)) < 4 * e_c + 0.03 * expected(mean_pt)
        assert abs(s_f / s_c - 3.0) < 4 * 3.0 * np.hypot(e_c / s_c, e_f / s_f) + 0.1
        assert s_c > previous  # absolute resolution grows with pT
        previous = s_c
    # mass and position resolutions
    m_rel = jets.reco_m.to_numpy()[central] / jets.truth_m.to_numpy()[central] - 1.0
    assert abs(robust_sigma(m_rel) - 0.10) < 0.005
    deta = (jets.reco_eta.to_numpy() - jets.truth_eta.to_numpy())[central]
    soft, hard = deta[pt[central] < 25], deta[pt[central] > 500]
    assert robust_sigma(soft) > 1.5 * robust_sigma(hard) and 0.008 < robust_sigma(hard) < 0.012


# --------------------------------------------------------------------------- dijet physics


def test_dijet_spectrum_follows_the_fit_function(tmp_path: Path) -> None:
    paths = simulate("dijet", 200_000, 2, 21, tmp_path, progress=False)
    truth = read(paths).truth_mjj.to_numpy().astype(np.float64)
    assert truth.min() >= 1500.0 and truth.max() <= 3000.0
    edges = np.linspace(1500.0, 3000.0, 31)
    counts, _ = np.histogram(truth, bins=edges)
    assert np.all(np.diff(counts) < 0)  # steeply falling
    fine = np.linspace(1500.0, 3000.0, 30 * 400 + 1)
    dens = dijet_pdf(fine)
    cell = 0.5 * (dens[1:] + dens[:-1]) * np.diff(fine)
    expected = cell.reshape(30, 400).sum(axis=1) / cell.sum() * len(truth)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 30 + 5 * np.sqrt(60)  # chi2 with 29 dof: far below a 5 sigma excess
    assert counts[0] / counts[-1] > 30


@pytest.mark.parametrize("smearing", [None, 0.10])
def test_dijet_reco_spread_matches_option(tmp_path: Path, smearing: float | None) -> None:
    paths = simulate("dijet", 50_000, 1, 3, tmp_path, smearing=smearing, progress=False)
    a = read(paths)
    rel = a.reco_mjj.to_numpy().astype(np.float64) / a.truth_mjj.to_numpy() - 1.0
    target = smearing or 0.03  # the default
    assert abs(rel.std() - target) < 4 * target / np.sqrt(2 * len(rel))
    assert abs(rel.mean()) < 4 * target / np.sqrt(len(rel))


def test_dijet_mass_range_option_via_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wide"
    args = ["simulate", "dijet", "--events", "20000", "--files", "2", "--seed", "4"]
    main([*args, "--out", str(out), "--mass-min", "1TeV", "--mass-max", "4500GeV", "--no-progress"])
    assert str(out) in capsys.readouterr().out
    truth = read(sorted(out.glob("dijet_*.root"))).truth_mjj.to_numpy()
    assert truth.min() >= 1000.0 and truth.max() <= 4500.0 and truth.max() > 3000.0
    assert np.mean(truth < 1500.0) > 0.5


# ---------------------------------------------------------------------------------- errors


def test_unwritable_output_dir_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / "out"
    with pytest.raises(OutputError, match="a_file/out"):
        simulate("dijet", 100, 1, 1, target, progress=False)
    with pytest.raises(OutputError, match="a_file"):
        simulate("dijet", 100, 1, 1, blocker, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_unwritable_output_dir_cli_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "zll", "--events", "10", "--out", str(blocker / "o"), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "hepscan: error:" in err and str(blocker / "o") in err


def test_unknown_sample_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="zll, jets, dijet"):
        simulate("wprime", 10, 1, 1, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="smearing"):
        simulate("zll", 10, 1, 1, tmp_path, smearing=0.1, progress=False)
    with pytest.raises(ConfigError, match="mass_range"):
        simulate("jets", 10, 1, 1, tmp_path, mass_range=(10.0, 20.0), progress=False)
    with pytest.raises(ConfigError, match="files"):
        simulate("zll", 2, 3, 1, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "wprime", "--events", "10", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "unknown sample 'wprime'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_failure_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.simulate import samples
    from jobs.simulate.dijet import _gen_dijet as real

    def failing(rng: np.random.Generator, n: int, cfg: DijetConfig) -> dict[str, np.ndarray]:
        if n == 1251:  # 5001 events in 4 files: only the first file gets 1251
            raise RuntimeError("generator broke")
        return real(rng, n, cfg)

    monkeypatch.setitem(samples._GENERATORS, "dijet", failing)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="generator broke"):
        simulate("dijet", 5001, 4, 1, out, workers=2, progress=False)
    assert not out.exists()
