"""The MLflow ``pyfunc`` flavour of a hepscan model: a :class:`models.bundle.ModelBundle` whose
directory is the model's one artifact (``bundle``).

.. code-block:: python

    import mlflow
    model = mlflow.pyfunc.load_model("models:/demo_unfold_zll/1")
    probs = model.predict(df)                                   # raw feature columns in
    reco = model.predict(truth_df, params={"output": "sample", "seed": 1})

Loading needs neither ``scan`` nor Ray nor Horovod: this module and the ``models`` package
travel with the model (``code_paths``), and only torch, numpy and pandas are imported.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

__all__ = ["BUNDLE_ARTIFACT", "BundleModel"]

BUNDLE_ARTIFACT = "bundle"


class BundleModel(PythonModel):  # type: ignore[misc]
    """``predict(df, params={"output": "proba"|"sample", "seed": 0})`` -> DataFrame."""

    def load_context(self, context: Any) -> None:
        from models.bundle import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT])
        self.bundle.build()

    # A DataFrame hint carries no schema: the signature logged with the model describes the
    # columns (without a hint MLflow warns on every load).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = dict(params or {})
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        out = self.bundle.predict(
            frame,
            output=str(params.get("output") or "") or None,
            seed=int(params.get("seed") or 0),
            where="model input",
        )
        return pd.DataFrame(out, index=frame.index)
