"""Masks: patterns from scores (unstructured, N:M) and packed files."""

from taskprune.masks.packed import load_masks, pack, save_masks, unpack, write_mask_files
from taskprune.masks.patterns import lowest_k_mask, make_mask, nm_mask, sparsity, unstructured_mask

__all__ = ["load_masks", "lowest_k_mask", "make_mask", "nm_mask", "pack", "save_masks", "sparsity", "unpack",
           "unstructured_mask", "write_mask_files"]
