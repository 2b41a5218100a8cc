"""LLM-Sieve low-rank projections: factors (the maths), modules (factorized and level linears), export."""

from taskprune.lowrank.export import LOWRANK_FILE, load_factorized, save_factorized
from taskprune.lowrank.factors import (Factors, breakeven_rank, damped, level_fractions, load_factors, mixed_moment,
                                       output_error, params_at, rank_for_fraction, save_factors, sieve_factors,
                                       whitened_factors)
from taskprune.lowrank.modules import (FactorizedLinear, LevelLinear, factorize_model, factorized_ranks, linear_paths,
                                       module_bias, refill_factors, replace_module)

__all__ = ["LOWRANK_FILE", "Factors", "FactorizedLinear", "LevelLinear", "breakeven_rank", "damped",
           "factorize_model", "factorized_ranks", "level_fractions", "linear_paths",
           "load_factorized", "load_factors", "mixed_moment", "module_bias", "output_error",
           "params_at", "rank_for_fraction", "refill_factors", "replace_module", "save_factorized", "save_factors",
           "sieve_factors", "whitened_factors"]
