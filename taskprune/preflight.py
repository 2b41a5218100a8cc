"""Checks before any stage runs, so a typo or a bad file fails in seconds and leaves every output untouched."""

from __future__ import annotations

from taskprune import config
from taskprune.config import Params
from taskprune.data.task import load_task
from taskprune.models.loading import local_model_dir
from taskprune.paths import Project


def preflight(project: Project, overrides: list[str]) -> Params:
    """Validate params (with overrides), every task row, and a local model directory."""
    params = config.load(project.params_file, overrides)
    load_task(params, project)
    name = params.model.name
    if not name.startswith("pip:") and not name.endswith(".gguf"):
        local_model_dir(name, project.root)  # checks a local directory and its architecture
    return params
