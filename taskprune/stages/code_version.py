"""code_version: the hash of the code each stage runs (artifacts/code/<stage>.json); runs every time, and
a stage re-runs when its file changed. See taskprune/codeversion.py."""

from __future__ import annotations

from taskprune.codeversion import CodeGraph, stage_code
from taskprune.config import Params
from taskprune.methods import get_method
from taskprune.paths import Project, read_json, write_json
from taskprune.pipeline import STAGES
from taskprune.target import run_methods, statistics_needed


def run(params: Params, project: Project) -> None:
    method = get_method(params.prune.method)
    also = tuple(get_method(name) for name in run_methods(params) if name != params.prune.method)
    graph = CodeGraph()
    changed = []
    for entry in STAGES:
        if entry.always_run:
            continue
        record = stage_code(entry, method, params.prune, graph, statistics_needed(params), also)
        path = project.code_file(entry.name)
        if not path.is_file() or read_json(path) != record:
            changed.append(entry.name)
            write_json(path, record)
    if changed:
        print(f"code: new code for {', '.join(changed)}")
