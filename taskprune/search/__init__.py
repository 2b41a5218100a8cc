"""Genetic search over per-matrix levels (ga.py), level switching in a loaded model (levels.py), fitness
workers (fitness.py) and the operating point (choice.py)."""

from taskprune.search.ga import (LevelSpace, SearchResult, level_swap, lowrank_space, repair, run_search,
                                 sparsity_space)

__all__ = ["LevelSpace", "SearchResult", "level_swap", "lowrank_space", "repair", "run_search", "sparsity_space"]
