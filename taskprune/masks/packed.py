"""Masks on disk: packed 1 bit per weight (safetensors), and masks.json saying how they were made."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file

from taskprune import tensorfile
from taskprune.paths import write_json

if TYPE_CHECKING:
    from taskprune.config import PruneConfig
    from taskprune.pruning import MaskResult


def pack(mask: torch.Tensor) -> torch.Tensor:
    """1 bit per weight (uint8), row-major."""
    return torch.from_numpy(np.packbits(mask.numpy().reshape(-1)))


def unpack(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    count = shape[0] * shape[1]
    bits = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def save_masks(path: Path, masks: dict[str, torch.Tensor]) -> None:
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    tensorfile.save({name: pack(mask) for name, mask in masks.items()}, path,
                    {"format": "taskprune-packed-masks-v1", "shapes": shapes})


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    shapes = tensorfile.read_metadata(path)["shapes"]
    return {name: unpack(packed, tuple(shapes[name])) for name, packed in load_file(str(path)).items()}



def write_mask_files(out: Path, cfg: PruneConfig, result: MaskResult) -> tuple[int, float]:
    """masks.safetensors (packed) and masks.json (how they were made, achieved sparsity) into ``out``;
    returns (weights, sparsity)."""
    save_masks(out / "masks.safetensors", result.masks)
    info = mask_info(cfg, result)
    write_json(out / "masks.json", info)
    return sum(m.numel() for m in result.masks.values()), info["sparsity"]


def mask_info(cfg: PruneConfig, result: MaskResult) -> dict:
    """What masks.json records: how the masks were made and the sparsity they reach."""
    total = sum(m.numel() for m in result.masks.values())
    overall = 1 - sum(int(m.sum()) for m in result.masks.values()) / total
    return {"method": cfg.method, "base": cfg.base, "stats": cfg.stats, "pattern": cfg.pattern,
            "allocation": cfg.allocation, "target_sparsity": cfg.sparsity, "sparsity": round(overall, 6),
            "per_layer": result.sparsity, "layer_target": {str(k): round(v, 6) for k, v in result.layer_target.items()},
            "exclusive": result.exclusive}
