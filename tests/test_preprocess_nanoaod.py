"""Tests of the ``nanoaod_dilepton`` selection on NanoAOD-layout files the tests write themselves.

Run: ``python -m pytest tests/test_preprocess_nanoaod.py``. The files hold only the branches a
NanoAOD Z->mumu user has (``nMuon``, ``Muon_{pt,eta,phi,charge,pfRelIso03_all,genPartIdx}``,
``nGenPart``, ``GenPart_{pt,eta,phi,pdgId}``; one test adds ``GenPart_{mass,status}``), written
with uproot's ``counter_name``/``field_name`` as NanoAOD names them. The expected rows are
computed by a per-event Python loop over the same arrays, independently of the vectorised
selection.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from jobs.manifest import load_manifest, load_split
from jobs.preprocess import preprocess, splitmix64
from jobs.preprocess.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "preprocess_nanoaod_zmumu.yaml"
MZ = 91.1876
MUON_MASS = 0.1056583755
ISO = "Muon_pfRelIso03_all"


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


# --- a NanoAOD-layout Z->mumu file ------------------------------------------------------------


def _decay(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Z -> mu- mu+: (pt, eta, phi) of both muons and the Z pT, eta, phi."""
    m = np.clip(MZ + 1.25 * rng.standard_cauchy(n), 60.0, 125.0)
    zpt, zy, zphi = rng.exponential(8.0, n), rng.normal(0.0, 1.0, n), rng.uniform(-np.pi, np.pi, n)
    mt = np.sqrt(m**2 + zpt**2)
    z = np.stack([zpt * np.cos(zphi), zpt * np.sin(zphi), mt * np.sinh(zy)], axis=1)
    ez = mt * np.cosh(zy)
    cost, phis = rng.uniform(-1, 1, n), rng.uniform(-np.pi, np.pi, n)
    sint = np.sqrt(1 - cost**2)
    p = np.sqrt(m**2 / 4 - MUON_MASS**2)
    d = p[:, None] * np.stack([sint * np.cos(phis), sint * np.sin(phis), cost], axis=1)
    b = z / ez[:, None]
    b2 = (b**2).sum(axis=1)
    gamma = 1 / np.sqrt(1 - b2)
    out = []
    for sign in (1.0, -1.0):
        q = sign * d
        e = m / 2
        bp = (q * b).sum(axis=1)
        k = (gamma - 1) * bp / np.where(b2 > 0, b2, 1.0) + gamma * e
        lab = q + k[:, None] * b
        pt = np.hypot(lab[:, 0], lab[:, 1])
        out += [pt, np.arcsinh(lab[:, 2] / pt), np.arctan2(lab[:, 1], lab[:, 0])]
    zeta = np.arcsinh(z[:, 2] / np.maximum(zpt, 1e-3))
    return (*out, zpt, zeta, zphi)


def write_nanoaod(path: Path, n: int = 800, seed: int = 7, extras: bool = False) -> dict[str, Any]:
    """A NanoAOD-layout file; returns facts about what it holds (for the tests' sanity checks).

    Per event: GenPart = [Z, mu-, mu+, (pi+)] (status 62, 1, 1, 1), with ``extras`` also a
    status-23 copy of the mu- with 10 % more pT (to check that the fallback prefers status 1).
    Reco muons: each generator muon with probability 0.85, smeared; genPartIdx -1 for 10 % of
    them; Poisson(0.4) fakes (genPartIdx -1, or the pion). Ten "background" events have no
    generator muon but a reco dimuon near mZ (its truth cannot be found). Five muons get a NaN
    isolation. Muons are sorted by decreasing pT as in NanoAOD.
    """
    rng = np.random.default_rng(seed)
    m1pt, m1eta, m1phi, m2pt, m2eta, m2phi, zpt, zeta, zphi = _decay(rng, n)
    background = set(rng.choice(n, 10, replace=False).tolist())
    muons: dict[str, list[list[Any]]] = {
        k: [] for k in ("pt", "eta", "phi", "charge", "pfRelIso03_all", "genPartIdx")
    }
    gen: dict[str, list[list[Any]]] = {
        k: [] for k in ("pt", "eta", "phi", "pdgId", "mass", "status")
    }
    for e in range(n):
        g: dict[str, list[Any]] = {k: [] for k in gen}

        def add(*values: Any, g: dict[str, list[Any]] = g) -> None:
            for k, v in zip(gen, values, strict=True):
                g[k].append(v)

        mus: list[tuple[float, float, float, int, float, int]] = []
        if e in background:
            add(3.0, 0.5, 0.1, 211, 0.1396, 1)
            mus = [
                (m1pt[e], m1eta[e], m1phi[e], -1, 0.01, -1),
                (m2pt[e], m2eta[e], m2phi[e], 1, 0.01, -1),
            ]
        else:
            add(zpt[e], zeta[e], zphi[e], 23, 91.0, 62)
            add(m1pt[e], m1eta[e], m1phi[e], 13, MUON_MASS, 1)
            add(m2pt[e], m2eta[e], m2phi[e], -13, MUON_MASS, 1)
            has_pion = rng.random() < 0.3
            if has_pion:
                add(rng.uniform(3, 15), rng.uniform(-2, 2), rng.uniform(-3, 3), 211, 0.1396, 1)
            if extras:
                add(1.1 * m1pt[e], m1eta[e], m1phi[e], 13, MUON_MASS, 23)
            for gi, (pt, eta, phi, q) in (
                (1, (m1pt[e], m1eta[e], m1phi[e], -1)),
                (2, (m2pt[e], m2eta[e], m2phi[e], 1)),
            ):
                if rng.random() < 0.85:
                    idx = gi if rng.random() >= 0.1 else -1
                    mus.append(
                        (
                            pt * (1 + 0.02 * rng.standard_normal()),
                            eta + 0.002 * rng.standard_normal(),
                            phi + 0.002 * rng.standard_normal(),
                            q,
                            rng.exponential(0.02),
                            idx,
                        )
                    )
            for _ in range(rng.poisson(0.4)):
                idx = 3 if has_pion and rng.random() < 0.5 else -1
                mus.append(
                    (
                        5 + rng.exponential(10.0),
                        rng.uniform(-2.4, 2.4),
                        rng.uniform(-np.pi, np.pi),
                        int(rng.choice([-1, 1])),
                        rng.uniform(0.0, 0.6),
                        idx,
                    )
                )
        mus.sort(key=lambda mu: -mu[0])
        for k, col in enumerate(muons):
            muons[col].append([mu[k] for mu in mus])
        for key in gen:
            gen[key].append(g[key])
    with_mu = [e for e in range(n) if muons["pt"][e]]
    for e in rng.choice(with_mu, 5, replace=False):
        muons["pfRelIso03_all"][e][rng.integers(len(muons["pt"][e]))] = float("nan")

    f32, i32 = np.float32, np.int32
    mu = ak.zip(
        {
            k: ak.values_astype(ak.Array(v), i32 if k in ("charge", "genPartIdx") else f32)
            for k, v in muons.items()
        }
    )
    gkeys = ("pt", "eta", "phi", "pdgId", *(("mass", "status") if extras else ()))
    gp = ak.zip(
        {
            k: ak.values_astype(ak.Array(gen[k]), i32 if k in ("pdgId", "status") else f32)
            for k in gkeys
        }
    )
    with uproot.recreate(path) as out:
        out.mktree(
            "Events",
            {"Muon": mu.type.content, "GenPart": gp.type.content},
            counter_name=lambda counted: "n" + counted,
            field_name=lambda outer, inner: f"{outer}_{inner}",
        )
        out["Events"].extend({"Muon": mu, "GenPart": gp})
    counts = np.array([len(x) for x in muons["pt"]])
    return {
        "n": n,
        "n0": int((counts == 0).sum()),
        "n1": int((counts == 1).sum()),
        "n3": int((counts >= 3).sum()),
    }


# --- the expectation: a per-event loop ----------------------------------------------------------


def _p4(pt: float, eta: float, phi: float, mass: float) -> np.ndarray:
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.array([px, py, pz, np.sqrt(px * px + py * py + pz * pz + mass * mass)])


def _mass(p: np.ndarray) -> float:
    return float(np.sqrt(max(p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2, 0.0)))


def _fallback(gpt: np.ndarray, pdg: np.ndarray, status: np.ndarray, want: float, other: int) -> int:
    cands = [i for i in range(gpt.size) if pdg[i] == want and status[i] == 1 and i != other]
    return max(cands, key=lambda i: (gpt[i], -i)) if cands else -1


def expected(path: Path, iso_max: float = 0.15) -> dict[str, Any]:
    """Rows (entry, values) and counts that nan_policy: drop + outside: drop must give."""
    t = uproot.open(path)["Events"].arrays(library="ak")
    has_status, has_mass = "GenPart_status" in t.fields, "GenPart_mass" in t.fields
    # per event lists of the stored (float32/int32) values, as float64
    lists = {k: ak.to_list(t[k]) for k in t.fields if k.startswith(("Mu", "Gen"))}
    rows: list[dict[str, float]] = []
    nan = failed = outside = no_truth = fallback_rows = 0
    for e in range(len(t)):
        ev = {k: np.asarray(v[e], dtype=np.float64) for k, v in lists.items()}
        if any(np.isnan(v).any() for v in ev.values()):
            nan += 1
            continue
        pt, eta, phi, q = ev["Muon_pt"], ev["Muon_eta"], ev["Muon_phi"], ev["Muon_charge"]
        good = [k for k in range(pt.size) if ev[ISO][k] < iso_max and pt[k] > 0]
        best: tuple[float, int, int, float] | None = None
        for a, b in itertools.combinations(good, 2):
            if q[a] * q[b] >= 0:
                continue
            m = _mass(_p4(pt[a], eta[a], phi[a], MUON_MASS) + _p4(pt[b], eta[b], phi[b], MUON_MASS))
            if best is None or abs(m - MZ) < best[0]:
                best = (abs(m - MZ), a, b, m)
        if best is None or not best[0] < 0.25 * MZ:
            failed += 1
            continue
        _, a, b, m = best
        if pt[b] > pt[a]:
            a, b = b, a
        gpt, geta, gphi, pdg = (
            ev["GenPart_pt"],
            ev["GenPart_eta"],
            ev["GenPart_phi"],
            ev["GenPart_pdgId"],
        )
        status = ev["GenPart_status"] if has_status else np.ones(gpt.size)

        gidx = ev["Muon_genPartIdx"].astype(int)
        t1, t2 = (
            int(gidx[k]) if 0 <= gidx[k] < gpt.size and abs(pdg[gidx[k]]) == 13 else -1
            for k in (a, b)
        )
        used_fallback = t1 < 0 or t2 < 0
        # unmatched: the highest-pT generator muon of the reco charge (status 1), not the other
        if t1 < 0:
            t1 = _fallback(gpt, pdg, status, -q[a] * 13, t2)
        if t2 < 0:
            t2 = _fallback(gpt, pdg, status, -q[b] * 13, t1)
        if t1 < 0 or t2 < 0:
            failed += 1
            no_truth += 1
            continue
        gm = ev["GenPart_mass"] if has_mass else np.full(gpt.size, MUON_MASS)
        tm = _mass(
            _p4(gpt[t1], geta[t1], gphi[t1], gm[t1]) + _p4(gpt[t2], geta[t2], gphi[t2], gm[t2])
        )
        if not (65.0 <= m < 115.0 and 65.0 <= tm < 115.0):
            outside += 1
            continue
        fallback_rows += used_fallback
        rows.append(
            {
                "entry": e,
                "reco_mass": m,
                "truth_mass": tm,
                "reco_l1_pt": pt[a],
                "reco_l2_pt": pt[b],
                "truth_l1_pt": gpt[t1],
                "truth_l2_pt": gpt[t2],
                "truth_l2_eta": geta[t2],
            }
        )
    return {
        "rows": rows,
        "nan": nan,
        "failed": failed,
        "outside": outside,
        "no_truth": no_truth,
        "fallback_rows": fallback_rows,
    }


def _all(path: Path) -> dict[str, np.ndarray]:
    m = load_manifest(path)
    parts = [load_split(m, s) for s in ("train", "validation", "test")]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check_against_loop(manifest: Path, root_file: Path, exp: dict[str, Any]) -> None:
    raw = json.loads(manifest.read_text())
    assert raw["counts"] == {
        "entries_read": 800,
        "nan_dropped": exp["nan"],
        "failed_selection": exp["failed"],
        "outside_edges": exp["outside"],
        "rows": len(exp["rows"]),
    }
    d = _all(manifest)
    # rows <-> loop rows through the event id (file checksum ^ entry, as the manifest says)
    key = np.uint64(int(hashlib.sha256(root_file.read_bytes()).hexdigest()[:16], 16))
    eid = splitmix64(key ^ np.array([r["entry"] for r in exp["rows"]], dtype=np.uint64))
    order = np.argsort(d["event_id"])
    exp_order = np.argsort(eid)
    np.testing.assert_array_equal(d["event_id"][order], eid[exp_order])
    for col in exp["rows"][0]:
        if col == "entry":
            continue
        want = np.array([r[col] for r in exp["rows"]])[exp_order]
        np.testing.assert_allclose(d[col][order], want, rtol=1e-12, err_msg=col)


# --- tests --------------------------------------------------------------------------------------


def test_shipped_config_validates() -> None:
    cfg, base, _ = load_config(CONFIG)
    assert cfg.tree == "Events" and cfg.selection.kind == "nanoaod_dilepton"
    assert cfg.unfold is not None and (cfg.unfold.truth, cfg.unfold.reco) == (
        "truth_mass",
        "reco_mass",
    )


def test_cli_on_a_file_with_only_the_nanoaod_branches(tmp_path: Path) -> None:
    """Acceptance: `hepscan preprocess configs/preprocess_nanoaod_zmumu.yaml --input F --out D`."""
    f = tmp_path / "nano.root"
    facts = write_nanoaod(f)
    assert uproot.open(f)["Events"].keys() == [
        "nMuon",
        "Muon_pt",
        "Muon_eta",
        "Muon_phi",
        "Muon_charge",
        "Muon_pfRelIso03_all",
        "Muon_genPartIdx",
        "nGenPart",
        "GenPart_pt",
        "GenPart_eta",
        "GenPart_phi",
        "GenPart_pdgId",
    ]
    # the file exercises events with 0, 1 and 3+ muons
    assert facts["n0"] > 3 and facts["n1"] > 50 and facts["n3"] > 50
    exp = expected(f)
    assert exp["nan"] == 5 and exp["no_truth"] > 0 and exp["fallback_rows"] > 20
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scan.cli",
            "preprocess",
            str(CONFIG),
            "--input",
            str(f),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{len(exp['rows'])} rows" in proc.stdout
    manifest = out / "manifest.json"
    raw = json.loads(manifest.read_text())
    assert raw["selection"] == "nanoaod_dilepton" and raw["tree"] == "Events"
    assert sorted(raw["branches"].values()) == sorted(
        [f"Muon_{v}" for v in ("pt", "eta", "phi", "charge", "pfRelIso03_all", "genPartIdx")]
        + [f"GenPart_{v}" for v in ("pt", "eta", "phi", "pdgId")]
    )
    # shards: row counts as the manifest says
    import pyarrow.parquet as pq

    total = 0
    for split in ("train", "validation", "test"):
        n_split = 0
        for shard in raw["splits"][split]["files"]:
            rows = pq.read_metadata(out / shard["path"]).num_rows
            assert rows == shard["rows"]
            n_split += rows
        assert n_split == raw["splits"][split]["rows"] > 0
        total += n_split
    assert total == raw["counts"]["rows"] == len(exp["rows"])
    for col in ("truth_mass", "reco_mass", "truth_bin", "reco_bin", "migration"):
        assert col in raw["columns"]
    assert raw["unfold"]["has_truth"] is True
    assert raw["plots"] == ["truth_vs_reco_mass.png"]
    assert (out / "truth_vs_reco_mass.png").stat().st_size > 1000
    _check_against_loop(manifest, f, exp)
    d = _all(manifest)
    # the reco muons follow the generator muons they match
    assert np.median(np.abs(d["reco_l1_pt"] / d["truth_l1_pt"] - 1)) < 0.03
    assert np.mean(np.abs(d["migration"]) <= 1) > 0.6


def test_status_and_mass_branches_are_used_when_present(scheduler: str, tmp_path: Path) -> None:
    f = tmp_path / "nano_extras.root"
    write_nanoaod(f, seed=8, extras=True)
    exp = expected(f)
    assert exp["fallback_rows"] > 20  # unmatched mu-: the status-1 muon, not the pT-higher copy
    path = preprocess(CONFIG, tmp_path / "out", inputs=[str(f)], scheduler=scheduler)
    assert "GenPart_status" in json.loads(path.read_text())["branches"].values()
    _check_against_loop(path, f, exp)


def test_nan_isolation_is_an_error_under_nan_policy_error(
    scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scan.cli import main

    f = tmp_path / "nano.root"
    write_nanoaod(f, n=300, seed=9)
    data = yaml.safe_load(CONFIG.read_text())
    data["nan_policy"] = "error"
    cfg = tmp_path / "error.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            ["preprocess", str(cfg), "--input", str(f), "--out", str(out), "--scheduler", scheduler]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(f) in err and f"branch {ISO!r} holds NaN/inf" in err and "nan_policy: drop" in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_missing_branch_and_unknown_flavour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scan.cli import main

    f = tmp_path / "reco_only.root"
    mu = ak.zip({"pt": ak.Array([[40.0, 30.0]]), "eta": ak.Array([[0.1, -0.2]])})
    with uproot.recreate(f) as out:
        out.mktree("Events", {"Muon": mu.type.content})
        out["Events"].extend({"Muon": mu})
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", str(CONFIG), "--input", str(f), "--out", str(out_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(f) in err and "no branch 'Muon_phi'" in err and not out_dir.exists()

    data = yaml.safe_load(CONFIG.read_text())
    data["selection"]["collection"] = "Photon"
    cfg = tmp_path / "photon.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", str(cfg), "--input", str(f), "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and str(cfg) in err and "selection" in err and "flavour" in err
