"""How far a compressed model's residual stream is from the dense model's, after each decoder layer: the
per-layer picture that says where the accuracy goes, for every method (a uniform sparsity or width cut has no
per-layer pattern of its own, but its damage does).

For dense layer L the compressed model's state is taken after its last kept layer at or before L (a method
that removes layers keeps the rest in order), so the curve also shows what removing a layer costs."""

from __future__ import annotations

import torch

from taskprune.calibration.walk import hidden_of

TEXTS = 8          # sequences per kind of text
MAX_TOKENS = 128   # tokens per sequence


class _Capture:
    """The output of every decoder layer of one forward pass, and the input of the first."""

    def __init__(self, layers):
        self.outputs: list[torch.Tensor] = []
        self.embedded: torch.Tensor | None = None
        self.handles = [layer.register_forward_hook(self._output) for layer in layers]
        self.handles.append(layers[0].register_forward_pre_hook(self._input, with_kwargs=True))

    def _output(self, module, args, output):
        self.outputs.append((output[0] if isinstance(output, tuple) else output).detach().float())

    def _input(self, module, args, kwargs):
        self.embedded = hidden_of(args, kwargs).detach().float()

    def reset(self) -> None:
        self.outputs, self.embedded = [], None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def kept_positions(dense_layers: int, removed: list[int]) -> list[int | None]:
    """For each dense layer, the position in the compressed model of its last kept layer at or before it
    (None: every layer up to there was removed, compare with the embeddings)."""
    positions, position = [], None
    for layer in range(dense_layers):
        if layer not in removed:
            position = 0 if position is None else position + 1
        positions.append(position)
    return positions


@torch.no_grad()
def layer_drift(model, model_layers, dense, dense_layers, sequences: dict[str, list[list[int]]], device: str,
                removed: list[int] = ()) -> dict:
    """Relative distance ``||h_model - h_dense|| / ||h_dense||`` of the residual stream after each dense decoder
    layer, per token, averaged over the tokens of each kind of text (``sequences``: token ids per kind, e.g. task
    prompts and general text; per token, so that the few tokens with huge activations, such as the first, do not
    stand for all). ``model_layers``/``dense_layers``: the two models' decoder layers (hooks go on them)."""
    positions = kept_positions(len(dense_layers), list(removed))
    mine, theirs = _Capture(model_layers), _Capture(dense_layers)
    out: dict[str, list[float]] = {}
    try:
        for kind, rows in sequences.items():
            total = torch.zeros(len(dense_layers), dtype=torch.float64)
            tokens = 0
            for ids in rows:
                batch = torch.tensor([ids], device=device)
                mine.reset(), theirs.reset()
                model(input_ids=batch, use_cache=False)
                dense(input_ids=batch, use_cache=False)
                for layer, position in enumerate(positions):
                    reference = theirs.outputs[layer].double()
                    state = (mine.embedded if position is None else mine.outputs[position]).double()
                    distance = (state - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-30)
                    total[layer] += distance.sum().cpu()
                tokens += len(ids)
            out[kind] = [round(float(d), 4) for d in total / max(tokens, 1)]
    finally:
        mine.close(), theirs.close()
    return {"texts": {kind: len(rows) for kind, rows in sequences.items()}, "max_tokens": MAX_TOKENS,
            "layers": [{"layer": layer, **{kind: values[layer] for kind, values in out.items()}}
                       for layer in range(len(dense_layers))]}


def drift_sequences(tokenizer, task_rows, general_texts: list[str]) -> dict[str, list[list[int]]]:
    """Token ids of the first ``TEXTS`` task rows (query and right answer) and general documents."""
    from taskprune.data.answers import encode
    from taskprune.data.tokens import text_prefix

    prefix = text_prefix(tokenizer)
    general = [(prefix + tokenizer(text, add_special_tokens=False)["input_ids"])[:MAX_TOKENS]
               for text in general_texts[:TEXTS]]
    return {"task": [ids for ids, _ in encode(tokenizer, task_rows[:TEXTS], MAX_TOKENS)],
            "general": [ids for ids in general if len(ids) > 1]}
