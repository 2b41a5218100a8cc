"""score: the method's masks (packed, 1 bit per weight), updated weights or factors of every decoder linear.

Updated weights (SparseGPT family) and factors (LLM-Sieve) go to artifacts/updates (model-sized, not
cached); the prune stage hands them back to the method.
"""

from __future__ import annotations

from safetensors.torch import save_file

from taskprune.artifacts import Artifacts
from taskprune.config import Params
from taskprune.lowrank import save_factors
from taskprune.masks import write_mask_files
from taskprune.methods import get_method
from taskprune.models.loading import load_local
from taskprune.paths import Project, StageTimer, atomic_dir, write_json


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "score")
    cfg = params.prune
    method = get_method(cfg.method)
    model, tokenizer, arch = load_local(project.dense_model, "cpu")
    result = method.score(params, model, tokenizer, arch, Artifacts(project))
    with atomic_dir(project.masks) as out:
        if result.masks is not None:
            total, overall = write_mask_files(out, cfg, result.masks)
        if result.structure is not None:
            write_json(out / "structure.json", result.structure)
        write_json(out / "stage.json", {"method": cfg.method, "masks": result.masks is not None,
                                        **({"structure": True} if result.structure is not None else {})})
    with atomic_dir(project.updates) as out:
        if result.weights is not None:
            save_file(result.weights, str(out / "weights.safetensors"), metadata={"method": cfg.method})
        if result.factors is not None:
            save_factors(out / "factors.safetensors", result.factors)
        write_json(out / "stage.json", {"method": cfg.method, "updated_weights": result.weights is not None,
                                        "factors": result.factors is not None, **result.notes})
    timer.done(method=cfg.method, stats=cfg.stats, pattern=cfg.pattern, allocation=cfg.allocation)
    if result.masks is not None:
        print(f"masks: {len(result.masks.masks)} linears, {total:,} weights, sparsity {overall:.4f} "
              f"({cfg.pattern}, {cfg.allocation})")
