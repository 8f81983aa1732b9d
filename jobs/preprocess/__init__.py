"""``hepscan preprocess``: ROOT files -> selected, standardised Parquet shards + ``manifest.json``.

Launch::

    hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep
    hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep \\
        --input 'data/zll/*.root' --workers 2
    hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep --scheduler tcp://HOST:8786

or from Python: ``preprocess("configs/preprocess_zll.yaml", "data/zll-prep")`` (returns the
manifest path). The config format is documented in :mod:`jobs.preprocess.config`, the output
contract in :mod:`jobs.manifest`; your own data: :mod:`jobs.preprocess.nanoaod` (NanoAOD-layout
files) and :mod:`jobs.preprocess.user` (a selection function of yours, as an import string).

Modules: ``config`` (the YAML format), ``select`` (built-in kinds, :class:`Jagged`),
``nanoaod`` and ``user`` (the other selections), ``plan`` (step 1), ``partition`` (the Dask
task of steps 2 and 4), ``build`` (step 3 and the manifest), ``driver`` (:func:`preprocess`),
``cli`` (the click command).

How it runs:

1. Validate everything that can be validated without Dask: config keys and column names,
   every input file (readable ROOT file, tree, branches, no basket beyond the end of the file),
   the output location. Each failure is one :class:`~models.errors.HepscanError` naming the file
   and key or branch; nothing is written.
2. Partition each file by memory (``step_size``, e.g. ``"100 MB"`` of the branches read), with
   the same entry ranges ``uproot.dask(step_size=...)`` makes (``TTree.num_entries_for``; a
   test checks they agree). Each partition is one task on a Dask cluster (a ``LocalCluster`` of
   single-threaded worker processes, or an existing scheduler): read its branches with uproot,
   check NaN/inf, apply the selection (built-in kinds on numpy arrays, import-string ones on
   awkward arrays), compute event ids, split labels and
   unfolding bins. Results stay in worker memory as futures. The tasks call uproot themselves
   instead of going through a ``uproot.dask`` collection: ``library="ak"`` needs dask-awkward,
   whose releases pin an older dask than distributed here, and ``library="np"`` turns jagged
   branches into object arrays and costs seconds of graph building per call.
3. Gather small per-partition statistics in partition order (so they do not depend on
   scheduling): feature mean/std on the train split only, (reco - truth) quantiles of the train
   split for the resolution classes, row counts per split.
4. Each partition task writes its rows into numbered shards (numbers fixed by the driver from
   the counts), standardised with the train scaler; the manifest and a truth-vs-reco PNG are
   written last. Everything goes into a temp dir next to ``--out`` that is renamed at the end
   and removed on any error.

Splits hash the per-event id with splitmix64, so an event keeps its split when files are
added. Rows keep file/entry order. The same inputs and config give a byte-identical manifest
(no timestamps, paths as written, floats from deterministic reductions in partition order).
"""

from jobs.preprocess.cli import preprocess_command
from jobs.preprocess.driver import preprocess
from jobs.preprocess.partition import bin_index, partitions, resolution_delta, split_of, splitmix64
from jobs.preprocess.plan import expand, make_plan, validate_inputs

__all__ = [
    "bin_index",
    "expand",
    "make_plan",
    "partitions",
    "preprocess",
    "preprocess_command",
    "resolution_delta",
    "split_of",
    "splitmix64",
    "validate_inputs",
]
