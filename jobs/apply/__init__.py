"""Apply trained models to events: unfold with uncertainties, or fast-simulate reco rows.

The computation behind ``hepscan apply`` (the command, and the resolution of a scan directory
or an MLflow URI into bundles, are in :mod:`scan.apply`); no MLflow, no Ray here.

.. code-block:: python

    from jobs.apply import apply_bundles, bundle_from_checkpoint, load_inputs, read_unfolded
    bundle = bundle_from_checkpoint("scans/zll/tune/trial_x/checkpoint_000007")
    inputs = load_inputs(bundle, ["data/zll"], split="test")      # or Parquet / ROOT files
    result = apply_bundles([bundle], "out", inputs, bootstrap=100, prior_iterations=1)
    doc = read_unfolded("out")        # hist.Hist objects + covariance

Modules: ``bundle`` (checkpoint + manifest -> :class:`models.bundle.ModelBundle`), ``inputs``
(dataset directories, Parquet, ROOT through the preprocessing config), ``unfold`` (bootstrap,
ensemble, prior iterations, baselines, metrics), ``outputs`` (JSON/CSV files), ``generate``
(resolution/GAN/flow fast simulation), ``plots``, ``run`` (:func:`apply_bundles`: temp dir,
rename).
"""

from jobs.apply.bundle import bundle_from_checkpoint, checkpoint_file
from jobs.apply.inputs import Inputs, load_inputs
from jobs.apply.outputs import read_unfolded
from jobs.apply.run import ApplyResult, apply_bundles, summary_lines
from jobs.apply.unfold import UnfoldResult, covariance_chi2, unfold_events

__all__ = [
    "ApplyResult",
    "Inputs",
    "UnfoldResult",
    "apply_bundles",
    "bundle_from_checkpoint",
    "checkpoint_file",
    "covariance_chi2",
    "load_inputs",
    "read_unfolded",
    "summary_lines",
    "unfold_events",
]
