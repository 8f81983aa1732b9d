"""The family contract, run on this example family with the test hepscan ships for users.

.. code-block:: bash

    PYTHONPATH=examples/custom_family python -m pytest -q examples/custom_family/test_resmlp.py

``FamilyContract`` builds the model on random tensors shaped by ``data_spec`` (no dataset) and
checks shapes, a gradient on every parameter, evaluate's metrics, save/load and seeded
determinism; see ``models/testing.py``.
"""

from __future__ import annotations

from models.testing import FamilyContract, tiny_manifest


class TestResMLP(FamilyContract):
    family = "resmlp:FAMILY"  # the same import string the scan config uses
    manifest = tiny_manifest(n_bins=8)  # features + an 8-bin 'unfold' section
    params = {"width": 16, "blocks": 2}
