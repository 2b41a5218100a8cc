"""score: importance scores of every decoder weight -> masks (packed, 1 bit per weight).

SparseGPT-based methods also update the kept weights (OBS); those go to
artifacts/updates/weights.safetensors, which the prune stage loads before masking.
For every other method artifacts/updates holds only a stage.json saying so.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from taskprune import masks as masklib
from taskprune.config import Params
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.calibration import SIDES
from taskprune.pruning import SideStats, compute_masks, sparsegpt_masks, sparsegpt_sides
from taskprune.stages.calibrate import calibration_blocks


def load_side_stats(path: Path) -> SideStats:
    with safe_open(str(path), framework="pt") as fh:
        tokens = int(fh.metadata()["tokens"])
    return SideStats(load_file(str(path)), tokens)


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "score")
    cfg = params.prune
    model, tokenizer, adapter = load_local(project.dense_model, "cpu")
    stats = None if cfg.method == "magnitude" else {
        side: load_side_stats(project.stats / f"{side}.safetensors") for side in SIDES}
    if cfg.sequential:
        blocks = calibration_blocks(project, params.calibration, tokenizer, sparsegpt_sides(cfg))
        result = sparsegpt_masks(model, adapter, cfg, stats, blocks, params.calibration.batch_size,
                                 pick_device(params.model.device))
    else:
        result = compute_masks(model, adapter, cfg, stats)
    total = sum(m.numel() for m in result.masks.values())
    overall = 1 - sum(int(m.sum()) for m in result.masks.values()) / total
    with atomic_dir(project.masks) as out:
        masklib.save_masks(out / "masks.safetensors", result.masks)
        write_json(out / "masks.json", {
            "method": cfg.method, "base": cfg.base, "stats": cfg.stats, "pattern": cfg.pattern, "allocation": cfg.allocation,
            "target_sparsity": cfg.sparsity, "sparsity": round(overall, 6), "per_layer": result.sparsity,
            "layer_target": {str(k): round(v, 6) for k, v in result.layer_target.items()},
            "exclusive": result.exclusive})
    with atomic_dir(project.updates) as out:
        if cfg.sequential:
            save_file({key: adapter.weight(module).contiguous() for key, module in adapter.named_linears(model).items()},
                      str(out / "weights.safetensors"), metadata={"method": cfg.method})
        write_json(out / "stage.json", {"method": cfg.method, "updated_weights": cfg.sequential})
    timer.done(method=cfg.method, stats=cfg.stats, pattern=cfg.pattern, allocation=cfg.allocation)
    print(f"masks: {len(result.masks)} linears, {total:,} weights, sparsity {overall:.4f} "
          f"({cfg.pattern}, {cfg.allocation})")
