"""Calibration: per-input-channel activation statistics of every decoder linear (layer walk, accumulators,
files, and the project's calibration text as token blocks)."""

from taskprune.calibration.accumulators import (Hessian, Moments, SquareSums, accumulate_inputs,
                                                collect_input_square_sums)
from taskprune.calibration.stats_io import (MomentWriter, SideStats, load_moments, load_side_stats, load_stats,
                                            save_moments)
from taskprune.calibration.walk import (SIDES, LayerPass, capture_layer_inputs, hooks_removed_on_exit,
                                        sequential_layers)

__all__ = ["SIDES", "Hessian", "LayerPass", "MomentWriter", "Moments", "SideStats", "SquareSums", "accumulate_inputs",
           "capture_layer_inputs", "collect_input_square_sums", "hooks_removed_on_exit", "load_moments",
           "load_side_stats", "load_stats", "save_moments", "sequential_layers"]
