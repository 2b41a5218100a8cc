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


def capture_layer_inputs(model: nn.Module, arch: Architecture, input_ids: torch.Tensor,
                         batch_size: int, device: str) -> list[tuple[tuple, dict]]:
    """Run the model up to decoder layer 0 for each batch; return that layer's (args, kwargs)."""
    layers = arch.layers(model)
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
            args, kwargs = _with_hidden(args, kwargs, _hidden_of(args, kwargs).to(self.device))
            try:
                out = self.layer(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise TaskPruneError("out of memory in calibration: lower calibration.batch_size, "
                                     "calibration.seq_len or calibration.num_samples") from None
            outputs.append((out[0] if isinstance(out, tuple) else out).to("cpu"))
        self.outputs[side] = outputs

    def changed(self) -> None:
        self.outputs.clear()

    def next_inputs(self) -> dict[str, list]:
        for side in self.inputs:
            if side not in self.outputs:
                self.run(side)
        return {side: [_with_hidden(args, kwargs, hidden) for (args, kwargs), hidden
                       in zip(self.inputs[side], self.outputs[side])] for side in self.inputs}


@torch.no_grad()
def sequential_layers(model: nn.Module, arch: Architecture, blocks: dict[str, torch.Tensor], batch_size: int,
                      device: str, desc: str) -> Iterator[LayerPass]:
    """Yield each decoder layer, on the device, with the inputs it gets from the layers before it.

    The model runs once up to layer 0 per side; from then on each layer runs on the
    previous layer's outputs (after any changes the caller made to that layer).
    """
    layers = arch.layers(model)
    inputs = {side: capture_layer_inputs(model, arch, ids, batch_size, device) for side, ids in blocks.items()}
    for index, layer in enumerate(tqdm(layers, desc=desc, unit="layer")):
        with _onloaded([layer], device):
            step = LayerPass(index, layer, inputs, device)
            yield step
            inputs = step.next_inputs()


class SquareSums:
    """Running per-input-channel sum of squares (float64) and token count for one linear."""

    def __init__(self, in_features: int):
        self.sum = torch.zeros(in_features, dtype=torch.float64)
        self.tokens = 0

    @staticmethod
    def contribution(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1]).float()
        return x.pow(2).sum(dim=0).to(device="cpu", dtype=torch.float64)  # float32 within a batch

    def add(self, contribution: torch.Tensor, tokens: int) -> None:
        self.sum += contribution
        self.tokens += tokens


class Hessian:
    """Running ``sum_t x_t x_t^T`` (float32) of one linear's inputs."""

    def __init__(self, in_features: int, device: str):
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    @staticmethod
    def contribution(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1]).float()
        return x.T @ x

    def add(self, contribution: torch.Tensor, tokens: int) -> None:
        self.sum += contribution


class Moments:
    """Square sums (as ``SquareSums``) and the full second moment ``sum_t x_t x_t^T`` (float32) together."""

    def __init__(self, in_features: int):
        self.squares = SquareSums(in_features)
        self.hessian = Hessian(in_features, "cpu")

    @staticmethod
    def contribution(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return SquareSums.contribution(x), Hessian.contribution(x).cpu()

    def add(self, contribution: tuple, tokens: int) -> None:
        self.squares.add(contribution[0], tokens)
        self.hessian.add(contribution[1], tokens)


def accumulate_inputs(step: LayerPass, arch: Architecture, side: str, make: Callable[[int], object]) -> dict:
    """Run ``step``'s layer on one side with an accumulator (``make(in_features)``) on every linear's input.

    Linears that read the same input tensor (q/k/v, gate/up) share one computation of its contribution.
    """
    linears = arch.linears(step.layer)
    accs = {name: make(arch.in_features(module)) for name, module in linears.items()}
    last: dict = {"input": None, "contribution": None}

    def hook(acc, inp):
        x = inp[0]
        if last["input"] is not x:
            last["input"], last["contribution"] = x, acc.contribution(x)
        acc.add(last["contribution"], x.numel() // x.shape[-1])

    with hooks_removed_on_exit() as handles:
        for name, module in linears.items():
            handles.append(module.register_forward_hook(lambda _m, inp, _out, a=accs[name]: hook(a, inp)))
        step.run(side)
    return accs


@torch.no_grad()
def collect_input_square_sums(model: nn.Module, arch: Architecture, input_ids: torch.Tensor,
                              batch_size: int = 8, device: str = "cpu", desc: str = "calibrating",
                              moments: bool = False):
    """Sum over all calibration tokens of x_j^2 for every input channel j of every decoder linear.

    Keys are ``"<layer index>.<linear name>"``; ``sqrt`` of a value is Wanda's ||X_j||_2.
    With ``moments`` it returns ``(square sums, second moments)``: the second moments (sum of
    x x^T, as LLM-Sieve's factorisation needs) once per distinct input of a layer, keyed by the
    first linear reading it, and the square sums taken from their diagonals' float64 twin.
    """
    stats: dict[str, torch.Tensor] = {}
    second: dict[str, torch.Tensor] = {}
    for step in sequential_layers(model, arch, {"calibration": input_ids}, batch_size, device, desc):
        accs = accumulate_inputs(step, arch, "calibration", Moments if moments else SquareSums)
        layer_moments: list[torch.Tensor] = []
        for name, acc in accs.items():
            key = f"{step.index}.{name}"
            if not moments:
                stats[key] = acc.sum.to(torch.float32)
                continue
            stats[key] = acc.squares.sum.to(torch.float32)
            h = acc.hessian.sum
            # linears reading one input (q/k/v, gate/up) got identical sums: keep one tensor for them
            second[key] = next((m for m in layer_moments if m.shape == h.shape and torch.equal(m, h)), h)
            if second[key] is h:
                layer_moments.append(h)
    return (stats, second) if moments else stats


def save_moments(path, moments: dict[str, torch.Tensor], metadata: dict) -> None:
    """Second moments to safetensors, each distinct tensor once (``shared`` maps every key to its stored key)."""
    from taskprune import tensorfile

    stored: dict[int, str] = {}
    shared = {key: stored.setdefault(id(tensor), key) for key, tensor in moments.items()}
    tensorfile.save({key: moments[key].contiguous() for key in set(shared.values())}, path,
                    {**metadata, "shared": shared})


def load_moments(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(second moment per linear key, the file's metadata)."""
    from safetensors.torch import load_file

    from taskprune import tensorfile

    metadata = tensorfile.read_metadata(path)
    tensors = load_file(str(path))
    return {key: tensors[first] for key, first in metadata["shared"].items()}, metadata
