"""Checks before any stage runs, so a typo or a bad file fails in seconds and leaves every output untouched."""

from __future__ import annotations

from taskprune import config
from taskprune.config import Params
from taskprune.data.schema import split
from taskprune.target import at_level
from taskprune.data.task import load_task
from taskprune.errors import TaskPruneError
from taskprune.models.architectures import architecture_for
from taskprune.models.loading import check_source, resolve_source, source_config
from taskprune.paths import Project
from taskprune.services import check_services


def preflight(project: Project, overrides: list[str], services: bool = True) -> Params:
    """Validate params (with overrides), every task row and the splits they make, and the model: the file or
    directory exists, its architecture is supported, it has a tokenizer (a packaged model is downloaded here,
    once, a hub id's config fetched) - and, with ``services``, that every service the run needs answers;
    all before anything starts or is written."""
    params = config.load(project.params_file, overrides)
    if services:
        check_services(params, project)  # a second or two each: before reading a task file from S3
    examples = load_task(params, project)
    try:
        split(examples, params.task.calib_fraction, params.task.seed, params.task.validation_fraction)
    except TaskPruneError as exc:
        where = params.task.path or f"built-in task {params.task.name}"
        held = f", task.validation_fraction {params.task.validation_fraction}" \
            if params.task.validation_fraction else ""
        raise TaskPruneError(f"{where}: {exc} (task.calib_fraction {params.task.calib_fraction}{held}: "
                             "at least one row on each side)") from None
    source = resolve_source(params.model.name, project.root, project.downloads)
    check_source(source, params.model.revision)
    settings = [params.prune]
    if params.target.enabled:  # every method target mode may try, at the highest level it may reach
        settings = [at_level(params, name, max(params.target.levels)).prune for name in params.target.methods]
    checked = [cfg for cfg in settings if cfg.method_object.reads_model_config]
    if checked:
        model_config = source_config(source, params.model.revision)
        arch = architecture_for(model_config.model_type, source.where)
        for cfg in checked:
            try:
                cfg.method_object.check_model(cfg, model_config, arch, source.where)
            except TaskPruneError as exc:
                if not params.target.enabled:
                    raise
                raise TaskPruneError(f"target mode: method {cfg.method} at its highest level "
                                     f"{max(params.target.levels):g} (target.levels): {exc}") from None
    return params
