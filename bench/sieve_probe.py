"""Why LLM-Sieve's factorization breaks Gemma-3 at its first level: a probe, not a benchmark.

Factorizes the decoder linears of a project's dense model with sieve's factors (whitened SVD of the calibration
moments, general and task mixed half and half, damp 0.01) at a parameter fraction, either every matrix or one kind
(``0.95:down_proj``), and reports how far the logits move from dense on the task's test prompts and on held-out
general text (relative L2), and the top-1 agreement with dense on the task prompts. Each setting is also run with
every matrix's output error weighed by the gain of the norm that follows it (``--norm-weighted``; Gemma-3's q/k
norms and its post-attention and post-feed-forward norms), to test whether those gains explain the damage, and
with each token's input weighed by 1 / the mean square of that matrix's dense output (``--token-weighted``: the
norm divides the output by its RMS, so what reaches the residual stream is the relative error of each token, which
the plain moments do not see), and with the outputs that are added to the residual stream after a norm also weighed
by 1 / that stream's mean square (``--residual-weighted``: the next layer's norm divides the sum by its RMS).

    .venv/bin/python bench/sieve_probe.py PROJECT 0.999 0.95 0.95:k_proj 0.95:down_proj [--norm-weighted]
        [--token-weighted] [--residual-weighted] [--accuracy]

PROJECT: a project whose prepare_data and calibrate stages have run (the moments are needed), e.g. Gemma-3-270M
on sentiment. A fraction is of each matrix's dense parameters (sieve's levels are such fractions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from taskprune import env
from taskprune.calibration import load_moments
from taskprune.lowrank.factors import (Factors, breakeven_rank, mixed_moment, rank_for_fraction, sieve_factors,
                                      whitened_factors)
from taskprune.lowrank.modules import factorize_model
from taskprune.models.loading import load_local

NORM_AFTER = {"self_attn.q_proj": "self_attn.q_norm", "self_attn.k_proj": "self_attn.k_norm",
              "self_attn.o_proj": "post_attention_layernorm", "mlp.down_proj": "post_feedforward_layernorm"}


def output_gain(model, arch, key: str):
    """|1 + weight| of the (Gemma-style) RMSNorm applied to this matrix's output, tiled over heads; None if none."""
    layer, name = key.split(".", 1)
    if name not in NORM_AFTER:
        return None
    norm = arch.layers(model)[int(layer)].get_submodule(NORM_AFTER[name])
    gain = (1 + norm.weight.detach().double()).abs()
    rows = arch.weight(arch.named_linears(model)[key]).shape[0]
    return gain.repeat(rows // gain.numel())


def norm_weighted_factors(model, arch, moments: dict) -> dict[str, Factors]:
    """Sieve's factors (``sieve_factors``) with each matrix's output error weighed by ``output_gain`` where a norm
    follows it: the weight's rows scaled by the gain before the whitened SVD, the up factor scaled back after."""
    made = {}
    for key, module in arch.named_linears(model).items():
        weight = arch.weight(module)
        rank = int(breakeven_rank(*weight.shape))
        gain = output_gain(model, arch, key)
        if gain is None:
            made[key] = whitened_factors(weight, moments[key], 0.01, max_rank=rank)
            continue
        gain = gain.clamp_min(gain.max() * 1e-3)
        f = whitened_factors((weight.double() * gain[:, None]).float(), moments[key], 0.01, max_rank=rank)
        made[key] = Factors(up=(f.up.double() / gain[:, None]).float().contiguous(), down=f.down, energy=f.energy)
    return made


# the norm whose input is the residual stream that a post-normed output is added to (Gemma-2/3)
RESIDUAL_BEFORE = {"self_attn.o_proj": "input_layernorm", "mlp.down_proj": "pre_feedforward_layernorm"}


@torch.no_grad()
def token_weighted_moments(model, arch, blocks: dict[str, torch.Tensor],
                           residual: bool = False) -> dict[str, torch.Tensor]:
    """Per matrix followed by a norm: the calibration inputs' second moment with each token weighed by 1 / the mean
    square of the matrix's dense output (per head for q/k, averaged over heads), both sides mixed as sieve mixes
    them; the first-order error after an RMS norm. Other matrices: absent (their plain moments apply).

    ``residual``: for the post-normed outputs (o, down) also by 1 / the mean square of the residual stream they
    are added to, since the next norm divides the sum by its RMS: a token whose residual is large (Gemma's first
    token carries activations hundreds of times the others') hardly feels its normalized output's error."""
    linears = {key: module for key, module in arch.named_linears(model).items() if key.split(".", 1)[1] in NORM_AFTER}
    head_dim = model.config.head_dim
    sums: dict[str, dict[str, torch.Tensor]] = {side: {} for side in blocks}
    side_now = [""]
    streams: dict[str, torch.Tensor] = {}

    def hook(module, args, out, key):
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        y = out.reshape(-1, out.shape[-1]).double()
        if key.endswith(("q_proj", "k_proj")):
            ms = y.view(len(y), -1, head_dim).pow(2).mean(-1)
            weight = (1 / (ms + 1e-6)).mean(-1)
        else:
            weight = 1 / (y.pow(2).mean(-1) + 1e-6)
            if residual:
                layer, name = key.split(".", 1)
                weight = weight / streams[f"{layer}.{RESIDUAL_BEFORE[name]}"]
        total = sums[side_now[0]].get(key)
        update = (x * weight[:, None]).T @ x
        sums[side_now[0]][key] = update if total is None else total + update

    def stream(args, name):
        h = args[0].reshape(-1, args[0].shape[-1]).double()
        streams[name] = h.pow(2).mean(-1) + 1e-6

    handles = [module.register_forward_hook(lambda m, a, o, key=key: hook(m, a, o, key))
               for key, module in linears.items()]
    if residual:
        for index, layer in enumerate(arch.layers(model)):
            for norm in RESIDUAL_BEFORE.values():
                handles.append(layer.get_submodule(norm).register_forward_pre_hook(
                    lambda _m, a, name=f"{index}.{norm}": stream(a, name)))
    for side, ids in blocks.items():
        side_now[0] = side
        for chunk in ids.split(8):
            model(input_ids=chunk, use_cache=False)
    for handle in handles:
        handle.remove()
    return {key: mixed_moment(sums["general"][key], sums["task"][key], 0.5) for key in linears}


def matrix_errors(model, arch, factors: dict[str, Factors], fraction: float, prompts: list) -> dict[str, float]:
    """Per kind of matrix, the mean over layers of the relative squared output error ||(W - UV) x||^2 / ||W x||^2
    on the prompts' own inputs to that matrix (the dense model's), at ``fraction``."""
    linears = arch.named_linears(model)
    seen = {key: [] for key in linears}
    hooks = [module.register_forward_pre_hook(lambda _m, args, key=key: seen[key].append(args[0][0].detach()))
             for key, module in linears.items()]
    with torch.no_grad():
        for ids in prompts:
            model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    by_kind: dict[str, list[float]] = {}
    for key, module in linears.items():
        weight = arch.weight(module).double()
        rank = rank_for_fraction(*weight.shape, fraction)
        approx = factors[key].up[:, :rank].double() @ factors[key].down[:rank].double()
        x = torch.cat(seen[key]).double()
        error = float((x @ (weight - approx).T).pow(2).sum() / (x @ weight.T).pow(2).sum())
        by_kind.setdefault(key.rsplit(".", 1)[-1], []).append(error)
    return {kind: sum(errors) / len(errors) for kind, errors in by_kind.items()}


def chunked(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("settings", nargs="+", help="FRACTION or FRACTION:KIND (a linear's name, e.g. down_proj)")
    parser.add_argument("--norm-weighted", action="store_true", help="also weigh errors by the following norm's gain")
    parser.add_argument("--token-weighted", action="store_true",
                        help="also weigh each token's input by 1 / its output's mean square where a norm follows")
    parser.add_argument("--residual-weighted", action="store_true",
                        help="also token-weighted with post-normed outputs weighed by 1 / the residual's mean square")
    parser.add_argument("--accuracy", action="store_true",
                        help="also each setting's task accuracy on the validation split (lm-eval, as the frontier)")
    parser.add_argument("--calibration", action="store_true",
                        help="also each setting's accuracy and answer-position KL to dense on the calibration rows "
                             "(what the product could choose a weighting by without the validation split)")
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()
    env.apply()
    torch.set_num_threads(1)
    artifacts = args.project / "artifacts"
    model, tokenizer, arch = load_local(artifacts / "model/dense", "cpu")
    keys = list(arch.named_linears(model))
    sides = {side: load_moments(artifacts / "moments" / side) for side in ("task", "general")}
    rows = [json.loads(line) for line in open(artifacts / "data/task_test.jsonl", encoding="utf-8")][:args.prompts]
    task = [tokenizer(r["query"] + " " + r["choices"][r["gold"]], return_tensors="pt").input_ids for r in rows]
    general = [tokenizer(json.loads(line)["text"], return_tensors="pt", truncation=True, max_length=128).input_ids
               for line in list(open(artifacts / "data/general_eval.jsonl", encoding="utf-8"))[:8]]
    with torch.no_grad():
        dense = [model(input_ids=ids).logits for ids in task + general]
    kinds = {"plain": sieve_factors(model, arch, sides, 0.5, 0.01)}  # exactly what method sieve computes
    if args.norm_weighted:
        mixed = {key: mixed_moment(sides["general"][key], sides["task"][key], 0.5) for key in keys}
        kinds["norm-weighted"] = norm_weighted_factors(model, arch, mixed)
    if args.token_weighted or args.residual_weighted:
        from taskprune import config
        from taskprune.calibration.blocks import calibration_blocks
        from taskprune.paths import Project

        project = Project(args.project)
        blocks = calibration_blocks(project, config.load(project.params_file).calibration, tokenizer)
        plain = kinds["plain"]
        for label, residual in (("token-weighted", False), ("residual-weighted", True)):
            if not (args.residual_weighted if residual else args.token_weighted):
                continue
            weighted = token_weighted_moments(model, arch, blocks, residual)
            kinds[label] = {key: whitened_factors(arch.weight(module), weighted[key], 0.01,
                                                  max_rank=int(breakeven_rank(*arch.weight(module).shape)))
                            if key in weighted else plain[key]
                            for key, module in arch.named_linears(model).items()}
    first = float(args.settings[0].partition(":")[0])
    errors = matrix_errors(model, arch, kinds["plain"], first, task)
    print(f"relative squared output error per matrix at fraction {first:g} (task prompts, mean over layers): "
          + ", ".join(f"{kind} {error:.2%}" for kind, error in errors.items()), flush=True)
    for setting in args.settings:
        fraction, _, kind = setting.partition(":")
        chosen = [key for key in keys if key.endswith(kind)]
        for label, factors in kinds.items():
            probe = load_local(artifacts / "model/dense", "cpu")[0]
            factorize_model(probe, arch, {k: factors[k] for k in chosen},
                            {k: rank_for_fraction(*arch.weight(arch.named_linears(model)[k]).shape, float(fraction))
                             for k in chosen})
            with torch.no_grad():
                logits = [probe(input_ids=ids).logits for ids in task + general]
            moved = [float((got - want).norm() / want.norm()) for got, want in zip(logits, dense)]
            agree = [float((got[0, :-1].argmax(-1) == want[0, :-1].argmax(-1)).float().mean())
                     for got, want in zip(logits[:len(task)], dense[:len(task)])]
            n = len(task)
            accuracy = ""
            if args.accuracy:
                from taskprune.evaluation.accuracy import run_lm_eval

                measured = run_lm_eval(probe, tokenizer, artifacts / "data/task_validation.jsonl", 16, None, "cpu")
                accuracy = f"; validation accuracy {measured['task_accuracy']:.3f}"
            if args.calibration:
                from taskprune.data.answers import collate, encode
                from taskprune.data.schema import read_jsonl
                from taskprune.evaluation.accuracy import run_lm_eval
                from taskprune.recovery import distill_loss

                calib = artifacts / "data/task_calib.jsonl"
                batches = [collate(encode(tokenizer, rows, 256), tokenizer.pad_token_id or 0)
                           for rows in chunked(read_jsonl(calib), 16)]
                kl = 0.0
                with torch.no_grad():
                    for batch in batches:  # at the positions that predict an answer token
                        where = torch.zeros_like(batch["labels"], dtype=torch.bool)
                        where[:, :-1] = batch["labels"][:, 1:] != -100
                        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                        kl += float(distill_loss(probe(**inputs).logits, model(**inputs).logits, where)) / len(batches)
                measured = run_lm_eval(probe, tokenizer, calib, 16, None, "cpu")
                accuracy += f"; calibration accuracy {measured['task_accuracy']:.3f}, answer KL to dense {kl:.4f}"
            print(f"fraction {fraction} {kind or 'all kinds'} ({label}): logits moved {sum(moved[:n]) / n:.3f} on task "
                  f"prompts, {sum(moved[n:]) / len(general):.3f} on general text; top-1 agreement "
                  f"{sum(agree) / n:.2f}{accuracy}", flush=True)


if __name__ == "__main__":
    main()
