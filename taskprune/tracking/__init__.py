"""Tracking: MLflow runs and model versions (runs.py), lineage tags (lineage.py), figures (plots.py)."""

from taskprune.tracking.plots import run_figures, run_name_of
from taskprune.tracking.runs import (CHALLENGER, RESULT_KEY, is_tracking_failure, register_result, registered_name,
                                     tracking_uri)

__all__ = ["CHALLENGER", "RESULT_KEY", "is_tracking_failure", "register_result", "registered_name", "run_figures",
           "run_name_of", "tracking_uri"]
