"""Architectures: everything model-specific (decoder layers, prunable linears), one module each."""

from taskprune.models.architectures.base import Architecture
from taskprune.models.architectures.registry import ARCHITECTURES, architecture_for, supported_model_types

__all__ = ["ARCHITECTURES", "Architecture", "architecture_for", "supported_model_types"]
