"""One function per stage: read the validated params and inputs, call the library, write outputs atomically.

``dvc.yaml`` runs them as ``taskprune stage NAME``; the Prefect flow runs them through DVC.
"""

from __future__ import annotations

from importlib import import_module

from taskprune.config import Params
from taskprune.paths import Project

STAGES = ("fetch_model", "prepare_data", "calibrate", "score", "search", "prune", "recover", "evaluate", "register")


# An orchestrator may take a stage over (flows/ routes the search through Prefect's Ray task runner
# when search.ray_address is set): stage name -> "module:function" called as
# function(params, project, run, **options), where ``run`` is the stage's own function. Imported only
# when that stage runs, so the library never imports Prefect.
ROUTES: dict[str, str] = {}


def run_stage(name: str, params: Params, project: Project, **options) -> None:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    run = import_module(f"taskprune.stages.{name}").run
    if name in ROUTES:
        module, _, function = ROUTES[name].partition(":")
        getattr(import_module(module), function)(params, project, run, **options)
    else:
        run(params, project, **options)


def preflight(project: Project, overrides: list[str]) -> Params:
    """Validate params (with overrides), every task row, and a local model directory, before any
    stage runs, so a typo or a bad file fails in seconds and leaves every output untouched."""
    from taskprune import config
    from taskprune.models.loading import local_model_dir
    from taskprune.stages.prepare_data import load_task

    params = config.load(project.params_file, overrides)
    load_task(params, project)
    name = params.model.name
    if not name.startswith("pip:") and not name.endswith(".gguf"):
        local_model_dir(name, project.root)  # checks a local directory and its architecture
    return params
