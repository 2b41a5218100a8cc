"""Architecture adapters, chosen by ``config.model_type``."""

from __future__ import annotations

from taskprune.errors import TaskPruneError
from taskprune.models.adapters.base import ModelAdapter
from taskprune.models.adapters.gpt2 import GPT2Adapter
from taskprune.models.adapters.llama import LlamaAdapter
from taskprune.models.adapters.opt import OPTAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    model_type: cls for cls in (LlamaAdapter, GPT2Adapter, OPTAdapter) for model_type in cls.model_types
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model_type: str, where: str = "model") -> ModelAdapter:
    try:
        return ADAPTERS[model_type]()
    except KeyError:
        raise TaskPruneError(
            f"{where}: unknown architecture {model_type!r} (config.model_type); supported: "
            f"{', '.join(supported_model_types())}. Add an adapter in taskprune/models/adapters/."
        ) from None
