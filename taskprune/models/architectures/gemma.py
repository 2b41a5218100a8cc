"""Gemma, Gemma-2 and Gemma-3 (text) decoders: Llama's module names. Gemma-3 mixes sliding-window and full
attention layers, each type with its own rotary table and mask; the layer walk gives every layer its own."""

from taskprune.models.architectures.llama import LlamaArchitecture


class GemmaArchitecture(LlamaArchitecture):
    model_types = ("gemma", "gemma2", "gemma3_text")

    def output_norms(self, layer):
        norms = super().output_norms(layer)
        if hasattr(layer, "post_feedforward_layernorm"):  # Gemma-2/3: the attention's and the MLP's outputs are
            norms.update({self.attention_output: None, self.mlp_output: None})  # normalized before the residual add
        return norms
