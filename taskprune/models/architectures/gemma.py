"""Gemma, Gemma-2 and Gemma-3 (text) decoders: Llama's module names. Gemma-3 mixes sliding-window and full
attention layers, each type with its own rotary table and mask; the layer walk gives every layer its own."""

from taskprune.models.architectures.llama import LlamaArchitecture


class GemmaArchitecture(LlamaArchitecture):
    model_types = ("gemma", "gemma2", "gemma3_text")
