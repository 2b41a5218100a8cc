"""Decode speed of factorized (sieve) models vs dense, by model shape, measured side by side.

Speed depends on shapes, not on weights: for each Llama-shaped config (SmolLM2-135M,
-360M, -1.7B by default) build a random-initialised model, factorize every decoder
linear at the uniform rank of ``--reduction`` (random factors of the right shapes), and
time greedy decoding at batch 1 with the two models alternating, median of rounds.
Shows how much of the decode time the decoder linears are at each size (Amdahl).

    .venv/bin/python bench/sieve_speed.py [--reduction 0.4] [--sizes 135M 360M 1.7B] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from taskprune import env

env.apply()

from prune_matrix import write_report  # noqa: E402  (same directory)

from taskprune.lowrank import Factors, factorize_model, rank_for_fraction  # noqa: E402
from taskprune.models.architectures import architecture_for  # noqa: E402

# SmolLM2 shapes (config.json of HuggingFaceTB/SmolLM2-*), vocabulary 49152, tied embeddings
SHAPES = {
    "135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "360M": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
    "1.7B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32),
}


@torch.no_grad()
def tokens_per_s(model, new_tokens: int) -> float:
    ids = torch.randint(0, 49152, (1, 8))
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--reduction", type=float, default=0.4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sieve_speed.md"))
    args = parser.parse_args()

    lines = ["| shape | parameters dense / factorized | decoder-linear share of parameters | decode tokens/s dense | "
             "factorized | ratio |", "|---|---|---|---|---|---|"]
    started = time.perf_counter()
    for size in args.sizes:
        config = LlamaConfig(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048, **SHAPES[size])
        torch.manual_seed(0)
        dense = LlamaForCausalLM(config).eval()
        factorized = LlamaForCausalLM(config).eval()
        arch = architecture_for("llama")
        linears = arch.named_linears(factorized)
        ranks, factors = {}, {}
        for key, module in linears.items():
            out_f, in_f = arch.weight(module).shape
            ranks[key] = rank_for_fraction(out_f, in_f, 1 - args.reduction)
            factors[key] = Factors(torch.randn(out_f, ranks[key]) * 0.02, torch.randn(ranks[key], in_f) * 0.02,
                                   torch.ones(ranks[key]))
        decoder = sum(arch.weight(m).numel() for m in linears.values())
        factorize_model(factorized, arch, factors, ranks)
        n_dense, n_fact = (sum(p.numel() for p in m.parameters()) for m in (dense, factorized))
        tokens_per_s(dense, 4), tokens_per_s(factorized, 4)  # warm-up
        speeds: dict[str, list[float]] = {"dense": [], "factorized": []}
        for _ in range(args.rounds):
            speeds["dense"].append(tokens_per_s(dense, args.new_tokens))
            speeds["factorized"].append(tokens_per_s(factorized, args.new_tokens))
        d, f = statistics.median(speeds["dense"]), statistics.median(speeds["factorized"])
        lines.append(f"| SmolLM2-{size} | {n_dense / 1e6:.0f}M / {n_fact / 1e6:.0f}M | {decoder / n_dense:.0%} | "
                     f"{d:.1f} | {f:.1f} | {f / d:.2f} |")
        print(lines[-1], flush=True)
        del dense, factorized
    lines += ["", f"Random-initialised Llama configs with SmolLM2's shapes, float32, CPU, {torch.get_num_threads()} torch "
              f"threads; every decoder linear factorized at the rank of {1 - args.reduction:.0%} of its parameters "
              f"({args.reduction:.0%} fewer decoder-linear parameters); greedy decode of {args.new_tokens} tokens at "
              f"batch 1, median of {args.rounds} alternating rounds. Whole benchmark: "
              f"{time.perf_counter() - started:.0f} s."]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
