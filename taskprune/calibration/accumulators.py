"""Running statistics of every decoder linear's inputs, collected during the layer walk (walk.py).

Each accumulator keeps a running sum over calibration tokens: per-channel sums of squares
(Wanda's norms), full second moments x x^T (SparseGPT's Hessians, LLM-Sieve's moments), and for a linear
whose output a norm rescales token by token, the moment with each token weighed by 1 / its output's mean square
(``RELATIVE``).
Linears that read the same input (q/k/v, gate/up) share one computation of its contribution.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from taskprune.calibration.walk import LayerPass, hidden_of, hooks_removed_on_exit, sequential_layers
from taskprune.models.architectures import Architecture


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


RELATIVE = ":relative"  # moment key suffix: ``"<layer>.<name>:relative"`` (RelativeMoment)


class RelativeMoment:
    """Running ``sum_t x_t x_t^T / (mean square of y_t + eps)`` (float32) of one linear whose output ``y`` a norm
    divides by its RMS token by token (per piece of ``width``, e.g. each head, with the pieces' weights averaged;
    ``width`` None: the whole output). To first order, what reaches the model is then the error relative to each
    token's output, ``(W - W') x_t / rms(y_t)``; the plain moment weighs tokens by their absolute size instead, so
    a few tokens with large outputs dominate it."""

    eps = 1e-6  # the norms' own (Gemma-3, Qwen3)

    def __init__(self, in_features: int, width: int | None):
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.width = width

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        y = y.reshape(len(x), -1).float()
        pieces = y.view(len(y), -1, self.width or y.shape[-1]).pow(2).mean(-1)
        weight = (1 / (pieces + self.eps)).mean(-1)
        self.sum += ((x * weight[:, None]).T @ x).cpu()


def accumulate_inputs(step: LayerPass, arch: Architecture, side: str, make: Callable[[int], object],
                      relative: dict[str, int | None] | None = None) -> dict:
    """Run ``step``'s layer on one side with an accumulator (``make(in_features)``) on every linear's input; with
    ``relative`` (``Architecture.output_norms``), also a ``RelativeMoment`` of each linear named there, under the
    key ``name + RELATIVE``.

    Linears that read the same input tensor (q/k/v, gate/up) share one computation of its contribution.
    """
    linears = arch.linears(step.layer)
    accs = {name: make(arch.in_features(module)) for name, module in linears.items()}
    for name, width in (relative or {}).items():
        accs[name + RELATIVE] = RelativeMoment(arch.in_features(linears[name]), width)
    last: dict = {"input": None, "contribution": None}

    def hook(name, inp, out):
        x = inp[0]
        if last["input"] is not x:
            last["input"], last["contribution"] = x, accs[name].contribution(x)
        accs[name].add(last["contribution"], x.numel() // x.shape[-1])
        if name + RELATIVE in accs:
            accs[name + RELATIVE].add(x, out)

    with hooks_removed_on_exit() as handles:
        for name, module in linears.items():
            handles.append(module.register_forward_hook(lambda _m, inp, out, name=name: hook(name, inp, out)))
        step.run(side)
    return accs


def block_influence(step: LayerPass, side: str) -> float:
    """How much the layer changes its input (ShortGPT's block influence): the mean over tokens of
    1 - cosine(hidden state in, hidden state out). Near 0: the layer barely matters to the residual stream."""
    total, count = 0.0, 0
    for (args, kwargs), out in zip(step.inputs[side], step.outputs[side]):
        x = hidden_of(args, kwargs).float().reshape(-1, out.shape[-1])
        cos = torch.nn.functional.cosine_similarity(x, out.float().reshape(-1, out.shape[-1]), dim=-1)
        total += float((1 - cos).sum())
        count += cos.numel()
    return total / max(count, 1)


@torch.no_grad()
def collect_input_square_sums(model: nn.Module, arch: Architecture, input_ids: torch.Tensor,
                              batch_size: int = 8, device: str = "cpu", desc: str = "calibrating",
                              moments: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
                              influence: list | None = None) -> dict[str, torch.Tensor]:
    """Sum over all calibration tokens of x_j^2 for every input channel j of every decoder linear.

    Keys are ``"<layer index>.<linear name>"``; ``sqrt`` of a value is Wanda's ||X_j||_2.
    With ``moments`` (a callable) each layer's second moments (sum of x x^T, as LLM-Sieve's factorisation
    and the structured refit need; linears reading one input share one tensor; for linears whose output a norm
    rescales, also their ``RELATIVE`` moments) are handed to it as soon as that layer is done,
    ``moments(layer index, {key: tensor})``, so the caller writes them out and no more than one
    layer's are ever held; the square sums are then taken from the moments' float64 twin.
    A list given as ``influence`` receives each layer's block influence (``block_influence``).
    """
    stats: dict[str, torch.Tensor] = {}
    for step in sequential_layers(model, arch, {"calibration": input_ids}, batch_size, device, desc):
        accs = accumulate_inputs(step, arch, "calibration", Moments if moments else SquareSums,
                                 arch.output_norms(step.layer) if moments else None)
        if influence is not None:
            influence.append(block_influence(step, "calibration"))
        layer_moments: list[torch.Tensor] = []
        second: dict[str, torch.Tensor] = {}
        for name, acc in accs.items():
            key = f"{step.index}.{name}"
            if isinstance(acc, RelativeMoment):
                second[key] = acc.sum
                continue
            if not moments:
                stats[key] = acc.sum.to(torch.float32)
                continue
            stats[key] = acc.squares.sum.to(torch.float32)
            h = acc.hessian.sum
            # linears reading one input (q/k/v, gate/up) got identical sums: keep one tensor for them
            second[key] = next((m for m in layer_moments if m.shape == h.shape and torch.equal(m, h)), h)
            if second[key] is h:
                layer_moments.append(h)
        if moments:
            moments(step.index, second)
        del accs, layer_moments, second
    return stats

