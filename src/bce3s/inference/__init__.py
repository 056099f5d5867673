"""Using a trained run: predict on image files (``bce3s predict``) and export a self-contained model
(``bce3s export``). See docs/using_a_model.md.

Example::

    rm = load_run_model("runs/digits_bce3s", "best_val")
    result = predict_files(rm, collect_inputs(["photos/"]), top_k=3)
    export_model(rm, "torchscript", "model.pt")
"""

from __future__ import annotations

from bce3s.inference.export import EXPORT_FORMATS, ExportedClassifier, export_model
from bce3s.inference.predict import Prediction, PredictResult, collect_inputs, predict_files, write_predictions
from bce3s.inference.runmodel import RunModel, load_run_model, probability_kind

__all__ = [
    "EXPORT_FORMATS",
    "ExportedClassifier",
    "PredictResult",
    "Prediction",
    "RunModel",
    "collect_inputs",
    "export_model",
    "load_run_model",
    "predict_files",
    "probability_kind",
    "write_predictions",
]
