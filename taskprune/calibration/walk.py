"""The layer walk shared by calibration and layer-by-layer pruning.

Sequential onloading: the model's forward runs once with every decoder layer stood
in for by a recorder (nothing computed), capturing layer 0's hidden states and each
layer's own keyword inputs (rotary table, mask); then each layer in turn is moved to
the device, run on its inputs with hooks on its linears, and its outputs become the
hidden states of the next layer. Only one decoder layer (plus the captured hidden
states, kept on the CPU) is on the device at a time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from taskprune.errors import TaskPruneError
from taskprune.models.architectures import Architecture


SIDES = ("general", "task")  # the two calibration corpora: general text, task text


class _Captured(Exception):
    pass


@contextlib.contextmanager
def hooks_removed_on_exit() -> Iterator[list]:
    """Every hook handle appended to the yielded list is removed when the block ends."""
    handles: list = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _onloaded(modules: list[nn.Module], device: str) -> Iterator[None]:
    if device == "cpu":
        yield
        return
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")


def _non_layer_modules(model: nn.Module, layers: nn.ModuleList) -> list[nn.Module]:
    """Leaf-level modules outside the decoder stack (embeddings, rotary tables, final norm, head)."""
    layer_ids = {id(m) for m in layers.modules()}
    return [m for m in model.modules()
            if id(m) not in layer_ids and not any(True for _ in m.children())]


class LayerStandIn(nn.Module):
    """Takes a decoder layer's place in the model (``layers[i] = StandIn(layer)``); attributes the model reads
    from its layers (Gemma-3's attention type) still come from the real layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # the model may read the layer's attributes (an attention type)
            return getattr(super().__getattr__("layer"), name)


class _Recorder(LayerStandIn):
    """Stands in for a decoder layer while the inputs are captured: records the (args, kwargs) the model's own
    forward gives that layer (its rotary table and mask: layer types differ, as in Gemma-3's sliding and full
    attention layers) and passes the hidden states on untouched, computing nothing."""

    def __init__(self, layer: nn.Module, store: list, first: bool, last: bool):
        super().__init__(layer)
        self.store, self.first, self.last = store, first, last

    def forward(self, *args, **kwargs):
        hidden = hidden_of(args, kwargs)
        kept = (tuple(a.to("cpu") if torch.is_tensor(a) else a for a in args), kwargs) if self.first else \
            _with_hidden(args, kwargs, None)  # later layers' hidden states come from the walk, not from here
        self.store.append(kept)
        if self.last:
            raise _Captured
        return hidden


def capture_layer_inputs(model: nn.Module, arch: Architecture, input_ids: torch.Tensor,
                         batch_size: int, device: str) -> list[list[tuple[tuple, dict]]]:
    """For each decoder layer, the (args, kwargs) the model's forward gives it, per batch: layer 0's with its
    hidden states, the others' with their own keyword inputs (rotary table, mask) and the hidden states left
    for the walk to fill in. The decoder layers themselves do not run."""
    layers = arch.layers(model)
    captured: list[list[tuple[tuple, dict]]] = [[] for _ in layers]
    originals = list(layers)
    with _onloaded(_non_layer_modules(model, layers), device):
        try:
            for index, layer in enumerate(originals):
                layers[index] = _Recorder(layer, captured[index], first=index == 0, last=index == len(originals) - 1)
            for start in range(0, input_ids.shape[0], batch_size):
                try:
                    model(input_ids[start:start + batch_size].to(device), use_cache=False)
                except _Captured:
                    pass
        finally:
            for index, layer in enumerate(originals):
                layers[index] = layer
    return captured


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class LayerPass:
    """One decoder layer during a sequential pass: its current inputs per calibration side.

    ``run(side)`` runs the layer on that side's inputs (hooks see its linears' inputs);
    after the caller changed the layer's weights it calls ``changed()``, and the
    outputs handed to the next layer are recomputed with the new weights.
    """

    def __init__(self, index: int, layer: nn.Module, inputs: dict[str, list], device: str):
        self.index, self.layer, self.inputs, self.device = index, layer, inputs, device
        self.outputs: dict[str, list[torch.Tensor]] = {}

    @torch.no_grad()
    def run(self, side: str) -> None:
        outputs = []
        for args, kwargs in self.inputs[side]:
            args, kwargs = _with_hidden(args, kwargs, hidden_of(args, kwargs).to(self.device))
            try:
                out = self.layer(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise TaskPruneError("out of memory in calibration: lower calibration.batch_size, "
                                     "calibration.seq_len or calibration.num_samples") from None
            outputs.append((out[0] if isinstance(out, tuple) else out).to("cpu"))
        self.outputs[side] = outputs

    def changed(self) -> None:
        self.outputs.clear()

    def next_inputs(self, captured: dict[str, list]) -> dict[str, list]:
        """The next layer's inputs: its own captured (args, kwargs) with this layer's outputs as hidden states."""
        for side in self.inputs:
            if side not in self.outputs:
                self.run(side)
        return {side: [_with_hidden(args, kwargs, hidden) for (args, kwargs), hidden
                       in zip(captured[side], self.outputs[side])] for side in self.inputs}


@torch.no_grad()
def sequential_layers(model: nn.Module, arch: Architecture, blocks: dict[str, torch.Tensor], batch_size: int,
                      device: str, desc: str) -> Iterator[LayerPass]:
    """Yield each decoder layer, on the device, with the inputs it gets from the layers before it.

    The model's forward runs once per side with the decoder layers stood in for, to capture every
    layer's own keyword inputs; from then on each layer runs on the previous layer's outputs (after
    any changes the caller made to that layer) and its own keyword inputs.
    """
    layers = arch.layers(model)
    captured = {side: capture_layer_inputs(model, arch, ids, batch_size, device) for side, ids in blocks.items()}
    inputs = {side: per_layer[0] for side, per_layer in captured.items()}
    for index, layer in enumerate(tqdm(layers, desc=desc, unit="layer")):
        with _onloaded([layer], device):
            step = LayerPass(index, layer, inputs, device)
            yield step
            if index + 1 < len(layers):
                inputs = step.next_inputs({side: per_layer[index + 1] for side, per_layer in captured.items()})

