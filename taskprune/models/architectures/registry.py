"""The architectures TaskPrune can handle, chosen by ``config.model_type``."""

from __future__ import annotations

from taskprune.errors import TaskPruneError
from taskprune.models.architectures.base import Architecture
from taskprune.models.architectures.gemma import GemmaArchitecture
from taskprune.models.architectures.gpt2 import GPT2Architecture
from taskprune.models.architectures.llama import LlamaArchitecture
from taskprune.models.architectures.opt import OPTArchitecture

ARCHITECTURES: dict[str, type[Architecture]] = {
    model_type: cls for cls in (LlamaArchitecture, GemmaArchitecture, GPT2Architecture, OPTArchitecture) for model_type in cls.model_types
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture_for(model_type: str, where: str = "model") -> Architecture:
    try:
        return ARCHITECTURES[model_type]()
    except KeyError:
        raise TaskPruneError(
            f"{where}: unknown architecture {model_type!r} (config.model_type); supported: "
            f"{', '.join(supported_model_types())}. Add a module in taskprune/models/architectures/."
        ) from None
