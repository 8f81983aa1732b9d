"""Simulated samples (``zll``, ``jets``, ``jets_tail``, ``dijet``, ``ttbar``, ``recoil``) written as ROOT
files (TTree ``events``).

Launch::

    hepscan simulate zll --events 10000000 --files 8 --seed 1 --out data/zll
    hepscan simulate jets --events 1000000 --files 2 --seed 1 --out data/jets
    hepscan simulate dijet --events 1000000 --files 2 --seed 1 --out data/dijet \
        --smearing 0.10 --mass-min 1TeV --mass-max 4TeV
    hepscan simulate recoil --events 300000 --files 2 --seed 1 --out data/recoil

or from Python::

    from jobs.simulate import simulate
    paths = simulate("zll", 200_000, files=4, seed=1, out="data/zll")

One Dask task writes one file. Every file draws from its own ``SeedSequence(seed).spawn(files)``
child, and inside a file every block of ``RNG_BLOCK`` events from its own grandchild, so the
output depends only on (sample, events, files, seed, options): not on the worker count, the
scheduler or ``chunk_size``. ``chunk_size`` only bounds memory: a file is generated and
written one chunk at a time (``TTree.extend``), so memory does not grow with the number of
events. Files are written under temporary names and renamed only once every file is complete.

``event_id`` is ``(file_index << 40) | index_in_file`` (uint64): unique across the files of a
sample and stable when the files are regenerated.

Branches (floats are float32, integers int32 unless stated):

``zll`` (Z/gamma* -> ee or mumu, GeV):
    ``event_id`` (uint64), ``pileup``, ``truth_flavour`` (11 or 13), ``truth_mass``,
    ``truth_pt``, ``truth_y``, ``truth_l{1,2}_{pt,eta,phi,charge}`` (l1 is the harder lepton),
    ``reco_ok`` (bool: both truth leptons reconstructed and in acceptance), ``reco_mass``
    (mass of the two matched reco leptons, 0 when not ``reco_ok``), and the jagged
    reconstructed-lepton collection ``nlep``, ``lep_{pt,eta,phi,charge,flavour,iso,truth_index}``
    sorted by decreasing pT (``lep_truth_index``: 0 or 1 for truth lepton 1 or 2, -1 for fakes).
``jets`` (one jet per entry, the ANL toy detector):
    ``event_id``, ``truth_{pt,eta,phi,m}``, ``reco_{pt,eta,phi,m}``, ``reco_ok`` (reco_* are 0
    when the jet is lost).
``jets_tail``: the ``jets`` branches and detector with a Crystal Ball low tail in the pT
    response (``JetsConfig(tail_alpha=1.5, tail_n=3)``: 12 % of jets in the power-law tail).
``dijet``:
    ``event_id``, ``truth_mjj``, ``reco_mjj`` (GeV).
``ttbar`` (Z′ → tt̄ at several masses over SM tt̄; :mod:`jobs.simulate.ttbar`):
    ``event_id``, ``truth_label`` (int32, 1 = signal), ``truth_mass`` (Z′ mass; drawn from the
    mass list for background), ``truth_mtt``, ``reco_mtt``, ``reco_top{1,2}_{pt,eta}``,
    ``reco_abs_dy``, ``reco_btag{1,2}``, ``reco_njets``.

``recoil`` (Z -> ll + hadronic recoil, particle-flow-like detector with pile-up, GeV):
    ``event_id``, ``truth_{pt,phi}`` (boson), ``truth_u{x,y}`` (true recoil), ``reco_ll_{pt,phi}``,
    ``mu``, ``npv``, ``{pf,ch,neu}_u{x,y}``, ``sumet_{pf,ch,neu}``, ``njets``, ``j{1,2}_{pt,phi}``,
    ``n_ch``, ``n_neu`` (see :mod:`jobs.simulate.recoil`).

Modules: ``common`` (constants, shared samplers), ``zll``, ``jets``, ``dijet``, ``ttbar``,
``recoil`` (one per sample's
physics), ``samples`` (registry and options), ``write`` (ROOT files with Dask; ``simulate``),
``cli`` (``hepscan simulate``).
"""

from __future__ import annotations

from jobs.simulate.cli import simulate_command
from jobs.simulate.common import (
    GAMMA_Z,
    M_ELECTRON,
    M_MUON,
    M_Z,
    META_KEY,
    RNG_BLOCK,
    SQRT_S,
    TREE_NAME,
)
from jobs.simulate.dijet import DijetConfig, dijet_pdf
from jobs.simulate.jets import JetsConfig
from jobs.simulate.recoil import RecoilConfig
from jobs.simulate.samples import SAMPLES, SampleConfig, sample_config
from jobs.simulate.ttbar import TTBAR_MASSES, TtbarConfig
from jobs.simulate.write import simulate
from jobs.simulate.zll import ELECTRON, MUON, LeptonDetector, ZllConfig

__all__ = [
    "DijetConfig",
    "ELECTRON",
    "GAMMA_Z",
    "JetsConfig",
    "LeptonDetector",
    "META_KEY",
    "MUON",
    "M_ELECTRON",
    "M_MUON",
    "M_Z",
    "RNG_BLOCK",
    "SAMPLES",
    "RecoilConfig",
    "SQRT_S",
    "SampleConfig",
    "TREE_NAME",
    "TTBAR_MASSES",
    "TtbarConfig",
    "ZllConfig",
    "dijet_pdf",
    "sample_config",
    "simulate",
    "simulate_command",
]
