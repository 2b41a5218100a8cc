"""score: importance scores of every decoder weight -> masks (packed, 1 bit per weight).

SparseGPT-based methods also update the kept weights (OBS); those go to
artifacts/updates/weights.safetensors, which the prune stage loads before masking.
For every other method artifacts/updates holds only a stage.json saying so.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from taskprune import masks as masklib
from taskprune.config import Params, PruneConfig
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.pruning import MaskResult, compute_masks, load_stats, sparsegpt_masks, sparsegpt_sides
from taskprune.stages.calibrate import calibration_blocks


def write_masks(out: Path, cfg: PruneConfig, result: MaskResult) -> tuple[int, float]:
    """masks.safetensors (packed) and masks.json (how they were made, achieved sparsity) into ``out``;
    returns (weights, sparsity)."""
    total = sum(m.numel() for m in result.masks.values())
    overall = 1 - sum(int(m.sum()) for m in result.masks.values()) / total
    masklib.save_masks(out / "masks.safetensors", result.masks)
    write_json(out / "masks.json", {
        "method": cfg.method, "base": cfg.base, "stats": cfg.stats, "pattern": cfg.pattern, "allocation": cfg.allocation,
        "target_sparsity": cfg.sparsity, "sparsity": round(overall, 6), "per_layer": result.sparsity,
        "layer_target": {str(k): round(v, 6) for k, v in result.layer_target.items()},
        "exclusive": result.exclusive})
    return total, overall


def score_sieve(params: Params, project: Project, model, arch) -> None:
    """LLM-Sieve: output-aware factors of every decoder linear, from the calibrate stage's second moments."""
    from tqdm.auto import tqdm

    from taskprune.calibration import load_moments
    from taskprune.lowrank import breakeven_rank, save_factors, sieve_factors

    cfg = params.prune.sieve
    sides = ["task"] + (["general"] if cfg.general_weight > 0 else [])
    moments = {side: load_moments(project.moments / f"{side}.safetensors")[0] for side in sides}
    linears = arch.named_linears(model)
    with tqdm(total=len(linears), desc="sieve factors", unit="matrix") as bar:
        factors = sieve_factors(model, arch, moments, cfg.general_weight, cfg.damp, progress=bar)
    with atomic_dir(project.masks) as out:  # no masks: sieve removes parameters instead of zeroing them
        write_json(out / "masks.json", {"method": "sieve", "base": params.prune.base, "stats": "task",
                                        "pattern": "lowrank", "allocation": params.prune.allocation,
                                        "target_sparsity": 0.0, "sparsity": 0.0, "per_layer": {},
                                        "layer_target": {}, "exclusive": {}})
    with atomic_dir(project.updates) as out:
        save_factors(out / "factors.safetensors", factors)
        write_json(out / "stage.json", {"method": "sieve", "updated_weights": False, "factors": True,
                                        "general_weight": cfg.general_weight, "damp": cfg.damp})
    print(f"sieve: factors of {len(factors)} matrices up to their break-even rank "
          f"(e.g. {next(iter(factors))}: {int(breakeven_rank(*arch.weight(next(iter(linears.values()))).shape))})")


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "score")
    cfg = params.prune
    model, tokenizer, arch = load_local(project.dense_model, "cpu")
    if cfg.method == "sieve":
        score_sieve(params, project, model, arch)
        timer.done(method=cfg.method)
        return
    stats = load_stats(project.stats, cfg.method)
    if cfg.sequential:
        blocks = calibration_blocks(project, params.calibration, tokenizer, sparsegpt_sides(cfg))
        result = sparsegpt_masks(model, arch, cfg, stats, blocks, params.calibration.batch_size,
                                 pick_device(params.model.device))
    else:
        result = compute_masks(model, arch, cfg, stats)
    with atomic_dir(project.masks) as out:
        total, overall = write_masks(out, cfg, result)
    with atomic_dir(project.updates) as out:
        if cfg.sequential:
            save_file({key: arch.weight(module).contiguous() for key, module in arch.named_linears(model).items()},
                      str(out / "weights.safetensors"), metadata={"method": cfg.method})
        write_json(out / "stage.json", {"method": cfg.method, "updated_weights": cfg.sequential})
    timer.done(method=cfg.method, stats=cfg.stats, pattern=cfg.pattern, allocation=cfg.allocation)
    print(f"masks: {len(result.masks)} linears, {total:,} weights, sparsity {overall:.4f} "
          f"({cfg.pattern}, {cfg.allocation})")
