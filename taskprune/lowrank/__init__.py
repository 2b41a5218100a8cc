"""LLM-Sieve low-rank projections: task-aware factors W ~= B A, factorized linears, smaller checkpoints.

For a weight W (d_out x d_in) and the second moment H = sum_t x_t x_t^T of its
inputs on calibration text, the rank-r matrix M minimising the output error
||(W - M) X||_F^2 = tr((W - M) H (W - M)^T) is the truncated SVD of W S taken
back through S^-1, where H = S S^T (whitened SVD, as in SVD-LLM). With the
eigendecomposition H = Q diag(l) Q^T, S = Q diag(sqrt l) and
S^-1 = diag(1/sqrt l) Q^T. One SVD gives every rank (nested truncations):

    W S = U diag(s) V^T,   B_r = U_r diag(sqrt s_r),   A_r = diag(sqrt s_r) V_r^T S^-1

and the relative output error at rank r is sum_{i>r} s_i^2 / sum_i s_i^2.

The closed form is the exact minimiser of that objective, so a few Adam steps on the
same objective cannot improve it; TaskPrune stops at the closed form (see the README).

A factorized linear stores A (``down``, r x d_in) and B (``up``, d_out x r); it pays
only when r (d_in + d_out) < d_in d_out. Levels are fractions of the dense
parameter count, level 0 being the dense matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

LOWRANK_FILE = "lowrank.json"  # in an exported model directory: rank per factorized module


@dataclass
class Factors:
    """Full-depth factors of one matrix: ``up[:, :r] @ down[:r]`` is its best rank-r approximation."""

    up: torch.Tensor        # B, d_out x k
    down: torch.Tensor      # A, k x d_in
    energy: torch.Tensor    # s_i^2, descending (output error accounting)

    def at_rank(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.up[:, :rank], self.down[:rank]

    def relative_error(self, rank: int) -> float:
        """Relative output error (w.r.t. the damped second moment) of the rank-``rank`` truncation."""
        return float(self.energy[rank:].sum() / self.energy.sum()) if self.energy.sum() > 0 else 0.0


def damped(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    h = hessian.double()
    diag = torch.diagonal(h)
    level = diag.mean() if diag.mean() > 0 else torch.tensor(1.0, dtype=h.dtype)
    return h + damp * level * torch.eye(h.shape[0], dtype=h.dtype)


def whitened_factors(weight: torch.Tensor, hessian: torch.Tensor | None, damp: float = 0.01,
                     max_rank: int | None = None) -> Factors:
    """Output-aware factors of ``weight`` (d_out x d_in) for inputs with second moment ``hessian``.

    ``hessian=None`` gives the plain SVD of the weight (the data-free baseline).
    ``max_rank`` keeps only the first columns/rows (the largest rank any level uses).
    """
    w = weight.double()
    if hessian is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        down_back = vh
    else:
        evals, q = torch.linalg.eigh(damped(hessian, damp))
        evals = evals.clamp_min(evals.max() * 1e-12)
        u, s, vh = torch.linalg.svd(w @ (q * evals.sqrt()), full_matrices=False)
        down_back = (vh / evals.sqrt()) @ q.T  # V^T S^-1
    k = s.numel() if max_rank is None else min(max_rank, s.numel())
    root = s[:k].sqrt()
    return Factors(up=(u[:, :k] * root).float().contiguous(), down=(root[:, None] * down_back[:k]).float().contiguous(),
                   energy=(s ** 2).float())


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error tr(D H D^T) / tr(W H W^T) with D = W - approx."""
    h = hessian.double()
    diff = (weight - approx).double()
    return float(torch.einsum("ij,jk,ik->", diff, h, diff) / torch.einsum("ij,jk,ik->", weight.double(), h,
                                                                         weight.double()))


def breakeven_rank(d_out: int, d_in: int) -> float:
    return d_out * d_in / (d_out + d_in)


def level_fractions(levels: int, target_reduction: float) -> list[float]:
    """Parameter fraction of each level: 1 (dense), then equal steps down, one of them exactly
    ``1 - target_reduction`` (the uniform allocation's level), all above 0."""
    on_grid = max(1, round(target_reduction * levels))
    step = target_reduction / on_grid
    return [1.0 - k * step for k in range(levels) if 1.0 - k * step > 1e-9]


def rank_for_fraction(d_out: int, d_in: int, fraction: float) -> int | None:
    """The rank whose factors hold about ``fraction`` of the dense parameters; None = keep dense."""
    if fraction >= 1.0 - 1e-9:
        return None
    return max(1, int(round(fraction * breakeven_rank(d_out, d_in))))


def params_at(d_out: int, d_in: int, rank: int | None) -> int:
    return d_out * d_in if rank is None else rank * (d_out + d_in)


class FactorizedLinear(nn.Module):
    """``x -> up(down(x))``: a rank-r replacement of a linear (A = down.weight, B = up.weight)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None) -> FactorizedLinear:
        module = cls(down.shape[1], up.shape[0], down.shape[0], bias is not None)
        with torch.no_grad():
            module.down.weight.copy_(down)
            module.up.weight.copy_(up)
            if bias is not None:
                module.up.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


class LevelLinear(nn.Module):
    """A linear that can run at any of its levels without rebuilding: dense weight, or a rank slice
    of precomputed full-depth factors. The genetic search sets ``rank`` per matrix per candidate."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, factors: Factors):
        super().__init__()
        self.weight = weight        # (out, in), shared with the original module's storage
        self.bias = bias
        self.up, self.down = factors.up, factors.down
        self.rank: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(F.linear(x, self.down[:self.rank]), self.up[:, :self.rank], self.bias)


def module_bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias.data if getattr(module, "bias", None) is not None else None


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, child, new)


def linear_paths(model: nn.Module, arch) -> dict[str, str]:
    """Matrix key ``"<layer>.<linear>"`` -> module path in the model."""
    names = {id(m): n for n, m in model.named_modules()}
    return {key: names[id(module)] for key, module in arch.named_linears(model).items()}


@torch.no_grad()
def factorize_model(model: nn.Module, arch, factors: dict[str, Factors], ranks: dict[str, int | None]) -> dict:
    """Replace every linear with a rank in ``ranks`` by a FactorizedLinear; returns {module path: rank}."""
    paths = linear_paths(model, arch)
    linears = arch.named_linears(model)
    done = {}
    for key, rank in ranks.items():
        if rank is None:
            continue
        up, down = factors[key].at_rank(rank)
        replace_module(model, paths[key], FactorizedLinear.from_factors(up, down, module_bias(linears[key])))
        done[paths[key]] = rank
    return done


def save_factorized(model: nn.Module, tokenizer, ranks: dict[str, int], out_dir: Path) -> None:
    """A safetensors model directory plus ``lowrank.json`` (rank per factorized module path)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / LOWRANK_FILE).write_text(json.dumps({"format": "taskprune-lowrank-v1", "ranks": ranks}, indent=2,
                                                   sort_keys=True) + "\n", encoding="utf-8")


def is_factorized(directory: Path) -> bool:
    return (directory / LOWRANK_FILE).is_file()


def _state_dict_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return sorted({directory / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    return [directory / "model.safetensors"]


def load_factorized(directory: Path, dtype: torch.dtype = torch.float32):
    """Rebuild an exported factorized model with transformers: config -> model -> FactorizedLinears -> weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = json.loads((directory / LOWRANK_FILE).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    for path, rank in spec["ranks"].items():
        old = model.get_submodule(path)
        out_features, in_features = (old.weight.shape[1], old.weight.shape[0]) if type(old).__name__ == "Conv1D" \
            else old.weight.shape
        replace_module(model, path, FactorizedLinear(in_features, out_features, rank, module_bias(old) is not None))
    state = {}
    for file in _state_dict_files(directory):
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(dict(model.named_parameters()))
    if getattr(config, "tie_word_embeddings", False):
        missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match {LOWRANK_FILE} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(dtype).eval()


def mixed_moment(general: torch.Tensor | None, task: torch.Tensor, general_weight: float) -> torch.Tensor:
    """``w * G + (1 - w) * T`` with each side scaled to mean diagonal 1 (sides saw different token counts)."""
    def normalised(h):
        return h.double() / torch.diagonal(h).double().mean().clamp_min(1e-12)
    if general is None or general_weight == 0:
        return normalised(task)
    return general_weight * normalised(general) + (1 - general_weight) * normalised(task)


@torch.no_grad()
def sieve_factors(model: nn.Module, arch, moments: dict[str, dict[str, torch.Tensor]], general_weight: float,
                  damp: float, progress=None) -> dict[str, Factors]:
    """Output-aware factors of every decoder linear, up to the break-even rank (every level is a truncation)."""
    factors = {}
    for key, module in arch.named_linears(model).items():
        weight = arch.weight(module)
        h = mixed_moment(moments["general"][key] if "general" in moments else None, moments["task"][key],
                         general_weight)
        factors[key] = whitened_factors(weight, h, damp, max_rank=int(breakeven_rank(*weight.shape)))
        if progress is not None:
            progress.update(1)
    return factors


def load_factors(path: Path) -> dict[str, Factors]:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    keys = {name.rsplit("/", 1)[0] for name in flat}
    return {key: Factors(flat[f"{key}/up"], flat[f"{key}/down"], flat[f"{key}/energy"]) for key in keys}


def save_factors(path: Path, factors: dict[str, Factors]) -> None:
    from safetensors.torch import save_file

    flat = {}
    for key, f in factors.items():
        flat.update({f"{key}/up": f.up.contiguous(), f"{key}/down": f.down.contiguous(),
                     f"{key}/energy": f.energy.contiguous()})
    save_file(flat, str(path), metadata={"format": "taskprune-factors-v1"})
