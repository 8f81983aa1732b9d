"""Physics studies that reproduce the papers' tables with hepscan's models and baselines.

Each study is a script writing a Markdown + CSV table and PNG plots::

    python -m benchmarks.studies.unfolding_table [--fast] [--out DIR] [--folds K]
    python -m benchmarks.studies.falling_spectrum [--fast] [--out DIR] [--folds K]
    python -m benchmarks.studies.prior_dependence [--fast] [--out DIR]
    python -m benchmarks.studies.resolution_jets [--fast] [--out DIR]

Results and the exact full-mode commands are in docs/studies.md.
"""
