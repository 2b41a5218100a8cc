"""Compression methods: one module each, registered by name (see base.py and registry.py)."""

from taskprune.methods.base import Method, Plan, PruneResult, ScoreResult
from taskprune.methods.registry import get_method, method_module, method_names, register

__all__ = ["Method", "Plan", "PruneResult", "ScoreResult", "get_method", "method_module", "method_names", "register"]
