"""LLM-Sieve (arXiv 2505.18350): output-aware low-rank factors W ~= B A of every decoder linear, a rank
per matrix (uniform, or chosen by the genetic search); the result is a factorized checkpoint."""

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
        print(f"sieve: factors of {len(factors)} matrices up to their break-even rank "
              f"(e.g. {first}: {int(breakeven_rank(*arch.weight(linears[first]).shape))})")
        return ScoreResult(factors=factors, notes={"general_weight": cfg.general_weight, "damp": cfg.damp})

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
        ranks = factorize_model(model, arch, inputs.factors(), allocation["values"])
        print(f"sieve: {len(ranks)} of {len(allocation['values'])} matrices factorized, "
              f"{allocation['reduction']:.1%} of the decoder-linear parameters removed")
        return PruneResult(
            model, compression=f"decoder-linear parameters -{allocation['reduction']:.1%}", sparsity=0.0,
            per_matrix={"name": "reduction_per_matrix", "title": "parameters removed per matrix",
                        "quantity": "share of the matrix's parameters removed",
                        "values": allocation["matrix_reduction"]},
            facts=dict(method="sieve", stats="task", pattern="lowrank", target_sparsity=0.0, achieved_sparsity=0.0,
                       reduction=allocation["reduction"], factorized=len(ranks)))
