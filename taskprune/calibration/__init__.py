"""Calibration: per-input-channel activation statistics of every decoder linear.

Sequential onloading: the embedding part of the model runs once to capture the
inputs of decoder layer 0; then each layer in turn is moved to the device, run
on its inputs with hooks on its linears, and its outputs become the inputs of
the next layer. Only one decoder layer (plus the captured hidden states, kept
on the CPU) is on the device at a time.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from taskprune.errors import TaskPruneError
from taskprune.models.adapters import ModelAdapter


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


def capture_layer_inputs(model: nn.Module, adapter: ModelAdapter, input_ids: torch.Tensor,
                         batch_size: int, device: str) -> list[tuple[tuple, dict]]:
    """Run the model up to decoder layer 0 for each batch; return that layer's (args, kwargs)."""
    layers = adapter.layers(model)
    captured: list[tuple[tuple, dict]] = []

    def grab(_module, args, kwargs):
        captured.append((tuple(a.to("cpu") if torch.is_tensor(a) else a for a in args), kwargs))
        raise _Captured

    with _onloaded(_non_layer_modules(model, layers), device), hooks_removed_on_exit() as handles:
        handles.append(layers[0].register_forward_pre_hook(grab, with_kwargs=True))
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                model(input_ids[start:start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    return captured


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class SquareSums:
    """Running per-input-channel sum of squares (float64) and token count for one linear."""

    def __init__(self, in_features: int):
        self.sum = torch.zeros(in_features, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        self.sum += (x * x).sum(dim=0).cpu()
        self.tokens += x.shape[0]


@torch.no_grad()
def collect_input_square_sums(model: nn.Module, adapter: ModelAdapter, input_ids: torch.Tensor,
                              batch_size: int = 8, device: str = "cpu", desc: str = "calibrating",
                              on_layer: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Sum over all calibration tokens of x_j^2 for every input channel j of every decoder linear.

    Keys are ``"<layer index>.<linear name>"``; ``sqrt`` of a value is Wanda's ||X_j||_2.
    """
    layers = adapter.layers(model)
    inputs = capture_layer_inputs(model, adapter, input_ids, batch_size, device)
    stats: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(tqdm(layers, desc=desc, unit="layer")):
        sums = {name: SquareSums(adapter.in_features(module)) for name, module in adapter.linears(layer).items()}
        outputs = []
        with _onloaded([layer], device), hooks_removed_on_exit() as handles:
            for name, module in adapter.linears(layer).items():
                handles.append(module.register_forward_hook(lambda _m, inp, _out, s=sums[name]: s.add(inp[0])))
            for args, kwargs in inputs:
                args, kwargs = _with_hidden(args, kwargs, _hidden_of(args, kwargs).to(device))
                try:
                    out = layer(*args, **kwargs)
                except torch.OutOfMemoryError:
                    raise TaskPruneError("out of memory in calibration: lower calibration.batch_size, "
                                         "calibration.seq_len or calibration.num_samples") from None
                outputs.append(out[0] if isinstance(out, tuple) else out)
        inputs = [_with_hidden(args, kwargs, hidden.to("cpu")) for (args, kwargs), hidden in zip(inputs, outputs)]
        for name, acc in sums.items():
            stats[f"{index}.{name}"] = acc.sum.to(torch.float32)
        if on_layer:
            on_layer(index)
    return stats
