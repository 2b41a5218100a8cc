"""LLM-Sieve (arXiv 2505.18350): output-aware low-rank factors W ~= B A of every decoder linear, a rank
per matrix (uniform, or chosen by the genetic search); the result is a factorized checkpoint.

Where a norm rescales a linear's output token by token (Gemma-2/3's post-norms, Gemma-3's and Qwen3's q/k norms),
the score also makes factors from the token-weighted moment (``taskprune.calibration.accumulators.RelativeMoment``),
and the prune step keeps, for the whole model, the weighting whose model answers more calibration rows correctly:
on Gemma-3-270M neither weighting is better at every task and level, and that choice picked one at least as good on
validation in 8 of 8 probed cases (bench/results/target_gemma.md). Models without such norms have one weighting.
"""

from __future__ import annotations

from taskprune.methods.base import Method, Plan, PruneResult, ScoreResult
from taskprune.methods.registry import register


@register
class Sieve(Method):
    name = "sieve"
    summary = "LLM-Sieve: task-aware low-rank factors, a rank per matrix (prune.sieve, search)"
    level_key, level_name = "search.target_reduction", "share of decoder-linear parameters removed"

    def plan(self, cfg) -> Plan:
        return Plan(statistics=("square_sums", "moments"), produces=("factors",), levels="lowrank",
                    always_allocates=True, export="factorized", sections=("sieve",))

    def check(self, cfg) -> None:
        if cfg.n_m is not None or cfg.allocation == "owl":
            raise ValueError("method 'sieve' picks a rank per matrix: use pattern 'unstructured' and "
                             "allocation 'uniform' or 'search'")

    def score(self, params, model, tokenizer, arch, inputs) -> ScoreResult:
        from tqdm.auto import tqdm

        from taskprune.lowrank import breakeven_rank, sieve_factors

        cfg = params.prune.sieve
        moments = inputs.moments(["task"] + (["general"] if cfg.general_weight > 0 else []))
        linears = arch.named_linears(model)
        with tqdm(total=len(linears), desc="sieve factors", unit="matrix") as bar:
            factors = sieve_factors(model, arch, moments, cfg.general_weight, cfg.damp, progress=bar)
        first = next(iter(linears))
        weighted = len(factors) - len(linears)
        print(f"sieve: factors of {len(linears)} matrices up to their break-even rank "
              f"(e.g. {first}: {int(breakeven_rank(*arch.weight(linears[first]).shape))})"
              + (f"; {weighted} followed by a norm also from token-weighted moments" if weighted else ""))
        return ScoreResult(factors=factors, notes={"general_weight": cfg.general_weight, "damp": cfg.damp,
                                                   **({"token_weighted_factors": weighted} if weighted else {})})

    def level_space(self, params, shapes):
        from taskprune.search import lowrank_space

        return lowrank_space(shapes, params.prune.sieve.levels, params.search.target_reduction)

    def level_setter(self, model, arch, keys, cfg, inputs):
        from taskprune.search.levels import RankLevels

        return RankLevels(model, arch, keys, inputs.factors())

    def allocate(self, params, model, arch, inputs, allocation) -> ScoreResult:
        return ScoreResult()  # the ranks in allocation.json are all prune needs

    def prune(self, params, model, arch, inputs) -> PruneResult:
        from taskprune.lowrank import factorize_model

        allocation = inputs.allocation()
        factors = inputs.factors()
        ranks = factorize_model(model, arch, factors, allocation["values"])
        weighting = self.weighting(params, model, arch, inputs, factors, allocation["values"])
        print(f"sieve: {len(ranks)} of {len(allocation['values'])} matrices factorized, "
              f"{allocation['reduction']:.1%} of the decoder-linear parameters removed")
        return PruneResult(
            model, compression=f"decoder-linear parameters -{allocation['reduction']:.1%}"
            + (f", {weighting['moment_weighting']} moments" if weighting else ""), sparsity=0.0,
            per_matrix={"name": "reduction_per_matrix", "title": "parameters removed per matrix",
                        "quantity": "share of the matrix's parameters removed",
                        "values": allocation["matrix_reduction"]},
            facts=dict(method="sieve", stats="task", pattern="lowrank", target_sparsity=0.0, achieved_sparsity=0.0,
                       reduction=allocation["reduction"], factorized=len(ranks), **weighting))

    @staticmethod
    def weighting(params, model, arch, inputs, factors: dict, values: dict) -> dict:
        """Where the score made token-weighted factors of factorized matrices: the model with plain factors and with
        those (same ranks) answer the calibration rows (lm-eval, as evaluation scores), and the one with more right
        answers stays in ``model`` (plain on a tie). Returns facts for the stage record ({} when there is no choice)."""
        from taskprune.calibration.accumulators import RELATIVE
        from taskprune.evaluation.accuracy import calibration_accuracy
        from taskprune.lowrank import refill_factors

        if not any(rank is not None and key + RELATIVE in factors for key, rank in values.items()):
            return {}
        def accuracy() -> float:
            return calibration_accuracy(model, inputs.tokenizer(), inputs.project, params.evaluate.batch_size)

        plain = accuracy()
        changed = refill_factors(model, arch, factors, values, RELATIVE)
        weighted = accuracy()
        kept = "token-weighted" if weighted > plain else "plain"
        if kept == "plain":
            refill_factors(model, arch, factors, values, "")
        print(f"sieve: {len(changed)} matrices followed by a norm: calibration accuracy {plain:.3f} with plain "
              f"moments, {weighted:.3f} with token-weighted ones; kept {kept}", flush=True)
        return {"moment_weighting": kept, "calibration_accuracy": {"plain": round(plain, 6),
                                                                  "token-weighted": round(weighted, 6)}}
