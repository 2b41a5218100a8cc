"""One module per stage: read the validated params and inputs, call the library, write outputs atomically.

``dvc.yaml`` runs them as ``taskprune stage NAME``; the Prefect flow runs them through DVC. The stage
list is the pipeline table (taskprune/pipeline.py); only the dispatcher imports stage modules.
"""

from taskprune.stages.dispatch import run_stage

__all__ = ["run_stage"]
