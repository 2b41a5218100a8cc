"""Calibration statistics on disk: per-side square sums and second moments (safetensors)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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


class MomentWriter:
    """Writes one side's second moments layer by layer into a directory (one safetensors file per decoder layer),
    as ``collect_input_square_sums`` hands them over."""

    def __init__(self, directory: Path, metadata: dict):
        self.directory, self.metadata = Path(directory), metadata
        self.directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, layer: int, moments: dict[str, torch.Tensor]) -> None:
        save_moments(self.directory / f"layer-{layer:04d}.safetensors", moments, {**self.metadata, "layer": layer})


class MomentFiles(Mapping):
    """One side's second moments, read from disk one matrix at a time when asked for (nothing is kept: a
    consumer that goes through the matrices holds one or two of them, not the model's worth)."""

    def __init__(self, directory: Path):
        self.files: dict[str, tuple[Path, str]] = {}
        for path in sorted(Path(directory).glob("layer-*.safetensors")):
            for key, stored in tensorfile.read_metadata(path)["shared"].items():
                self.files[key] = (path, stored)

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        path, stored = self.files[key]
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor(stored)

    def __contains__(self, key) -> bool:  # without reading the tensor (Mapping's would)
        return key in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_moments(directory) -> MomentFiles:
    """The second moments per linear key that ``MomentWriter`` wrote (read lazily)."""
    return MomentFiles(Path(directory))
