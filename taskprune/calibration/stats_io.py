"""Calibration statistics on disk: per-side square sums and second moments (safetensors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from taskprune import tensorfile
from taskprune.calibration.walk import SIDES


@dataclass
class SideStats:
    """Calibration statistics of one side: square sums per linear, and the token count."""

    square_sums: dict[str, torch.Tensor]
    tokens: int
    influence: list[float] | None = None   # per decoder layer, when the method asked for it (block influence)


def load_side_stats(path) -> SideStats:
    from safetensors.torch import load_file

    metadata = tensorfile.read_metadata(path)
    return SideStats(load_file(str(path)), int(metadata["tokens"]), metadata.get("influence"))


def load_stats(stats_dir) -> dict[str, SideStats]:
    """Both sides' square sums from the calibrate stage's directory."""
    return {side: load_side_stats(Path(stats_dir) / f"{side}.safetensors") for side in SIDES}


def save_moments(path, moments: dict[str, torch.Tensor], metadata: dict) -> None:
    """Second moments to safetensors, each distinct tensor once (``shared`` maps every key to its stored key)."""


    stored: dict[int, str] = {}
    shared = {key: stored.setdefault(id(tensor), key) for key, tensor in moments.items()}
    tensorfile.save({key: moments[key].contiguous() for key in set(shared.values())}, path,
                    {**metadata, "shared": shared})


def load_moments(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(second moment per linear key, the file's metadata)."""
    from safetensors.torch import load_file



    metadata = tensorfile.read_metadata(path)
    tensors = load_file(str(path))
    return {key: tensors[first] for key, first in metadata["shared"].items()}, metadata
