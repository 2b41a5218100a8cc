"""score: importance scores of every decoder weight -> masks (packed, 1 bit per weight)."""

from __future__ import annotations

from safetensors.torch import load_file
from taskprune import masks as masklib
from taskprune.config import Params
from taskprune.models.loading import load_local
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.pruning import compute_masks


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "score")
    cfg = params.prune
    model, _tokenizer, adapter = load_local(project.dense_model, "cpu")
    stats = None if cfg.method == "magnitude" else load_file(str(project.stats / f"{cfg.stats}.safetensors"))
    masks = compute_masks(model, adapter, cfg.method, stats, cfg.sparsity, cfg.n_m)
    per_layer = {key: round(masklib.sparsity(mask), 6) for key, mask in masks.items()}
    total = sum(m.numel() for m in masks.values())
    overall = 1 - sum(int(m.sum()) for m in masks.values()) / total
    with atomic_dir(project.masks) as out:
        masklib.save_masks(out / "masks.safetensors", masks)
        write_json(out / "masks.json", {"method": cfg.method, "stats": cfg.stats, "pattern": cfg.pattern,
                                        "target_sparsity": cfg.sparsity, "sparsity": round(overall, 6),
                                        "per_layer": per_layer})
    timer.done(method=cfg.method, stats=cfg.stats, pattern=cfg.pattern)
    print(f"masks: {len(masks)} linears, {total:,} weights, sparsity {overall:.4f} ({cfg.pattern})")
