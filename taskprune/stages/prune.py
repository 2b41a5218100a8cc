"""prune: the method makes the dense model into the pruned one, saved in the method's export format,
with a stage.json that explains it (how it was made, and what the method reports per matrix)."""

from __future__ import annotations

from taskprune.artifacts import Artifacts
from taskprune.config import Params
from taskprune.methods import get_method
from taskprune.models.formats import FORMATS
from taskprune.models.loading import load_local
from taskprune.paths import Project, StageTimer, atomic_dir, write_json


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "prune")
    method = get_method(params.prune.method)
    plan = method.plan(params.prune)
    model, tokenizer, arch = load_local(project.dense_model, "cpu", owned=True)  # pruned in place or consumed
    result = method.prune(params, model, arch, Artifacts(project))
    with atomic_dir(project.pruned_model) as out:
        FORMATS[plan.export].save(result.model, tokenizer, out)
        write_json(out / "stage.json", {**result.facts, "label": method.label(params.prune), "format": plan.export,
                                        "compression": result.compression, "sparsity": result.sparsity,
                                        "per_matrix": result.per_matrix, "base_model": params.model.name,
                                        **({"removed": result.removed} if result.removed else {})})
    timer.done()
