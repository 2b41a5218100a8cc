"""Task-aware structured pruning: whole decoder layers, attention head groups and MLP channels removed, so the
result is a plain checkpoint of the same architecture with a smaller config (fewer layers, a narrower MLP,
fewer heads), loadable by transformers alone, smaller on disk and faster to decode.

Unit importance comes from the calibration square sums of the layer's output projections (both sides) and, for
layers, from skipping each layer (or its block influence); the two sides are fused unit by unit as the
unstructured task-aware method fuses weights (prune.task_aware: alpha, partition, ablations).

How much comes from attention and how much from MLP width depends on the task: on SmolLM2-135M at about 10 %,
removing one of three head groups per layer kept more capital and topics answers than the same parameters taken
from MLP width, while on sentiment at 30 % width alone kept more (bench/results/structured_heads.md). With
``keep_heads: auto`` (opt-in, for its cost at size: bench/results/scale.md) the score step scores all heads and up
to two smaller numbers of head groups the level allows (``taskprune.units.head_options``) on the calibration rows
(lm-eval, as evaluation scores) and keeps the one that answers more (all heads on a tie).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict

import torch

from taskprune.calibration import SIDES
from taskprune.errors import TaskPruneError
from taskprune.methods.base import Method, Plan, PruneResult, ScoreResult
from taskprune.methods.registry import register
from taskprune.scoring.task_aware import fuse_units


UNIT_NAMES = {"layers": "layers", "head_groups": "head groups", "mlp_channels": "MLP channels"}
SKIP_ROWS, SKIP_BLOCKS = 64, 8  # layer skip losses: task rows and general blocks (one forward each per layer)


def _batches(rows: list, size: int) -> list:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


@register
class Structured(Method):
    name = "structured"
    summary = "task-aware removal of layers, head groups and MLP channels: a smaller model (prune.structured)"
    reads_model_config = True
    level_key, level_name = "prune.structured.reduction", "share of decoder-linear parameters removed"

    def plan(self, cfg) -> Plan:
        refit = ("moments",) if cfg.structured.refit else ()
        return Plan(statistics=("square_sums", *refit, "influence"), produces=("structure",),
                    sections=("structured", "task_aware"))

    def label(self, cfg) -> str:
        ablation = cfg.task_aware.ablation
        return "structured" if ablation == "none" else f"structured+{ablation}"

    def settings_label(self, cfg) -> str:
        s = cfg.structured
        return f"reduction{s.reduction:g}" + (f"-depth{s.depth:g}" if s.depth else "") + \
            (f"-heads{s.keep_heads}" if isinstance(s.keep_heads, int) else "")

    def check(self, cfg) -> None:
        if cfg.n_m is not None or cfg.allocation != "uniform":
            raise ValueError("method 'structured' removes whole units with the same width in every layer: use "
                             "pattern 'unstructured' and allocation 'uniform' (its amount is "
                             "prune.structured.reduction)")

    def check_model(self, cfg, model_config, arch, where) -> None:
        from taskprune.units import unit_counts

        try:
            units = arch.units(model_config)
        except TaskPruneError as exc:
            raise TaskPruneError(f"{where}: {exc} (prune.method structured)") from None
        try:
            unit_counts(units, cfg.structured)
        except ValueError as exc:
            raise TaskPruneError(str(exc)) from None

    # -- the steps ---------------------------------------------------------------------------------
    def layer_importance(self, params, model, tokenizer, arch, inputs, stats) -> dict[str, torch.Tensor]:
        from taskprune.data.answers import collate, encode
        from taskprune.data.schema import read_jsonl
        from taskprune.units import skip_losses

        if params.prune.structured.layer_score == "influence":
            return {side: torch.tensor(stats[side].influence, dtype=torch.float64) for side in SIDES}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        size = params.calibration.batch_size
        rows = encode(tokenizer, read_jsonl(inputs.project.data / "task_calib.jsonl")[:SKIP_ROWS],
                      params.recover.max_len)
        blocks = inputs.blocks(tokenizer, params.calibration, ["general"])["general"][:SKIP_BLOCKS]
        general = [{"input_ids": b, "labels": b, "attention_mask": torch.ones_like(b)} for b in blocks.split(size)]
        return skip_losses(model, arch, {"general": general,
                                         "task": [collate(chunk, pad) for chunk in _batches(rows, size)]})

    def score(self, params, model, tokenizer, arch, inputs) -> ScoreResult:
        from taskprune.units import choose, head_options, unit_counts, unit_importance

        cfg = params.prune
        units = arch.units(model.config)
        options = {kept: unit_counts(units, cfg.structured, kept) for kept in head_options(units, cfg.structured)}
        counts = next(iter(options.values()))
        stats = inputs.stats()
        # importance does not change with the level: kept for the next level when target mode tries several
        sides = inputs.kept(("structured", "units"),
                            lambda: {side: unit_importance(model, arch, stats[side]) for side in SIDES})
        fused = {kind: [fuse_units(g, t, cfg.task_aware) for g, t in zip(sides["general"][kind], sides["task"][kind])]
                 for kind in ("channels", "groups")}
        layers = inputs.kept(("structured", "layers", cfg.structured.layer_score), lambda: self.layer_importance(
            params, model, tokenizer, arch, inputs, stats)) if counts.layers_removed else None
        layer_scores = fuse_units(layers["general"], layers["task"], cfg.task_aware) if layers is not None \
            else torch.ones(units.layers, dtype=torch.float64)
        keeps = {kept: choose(option, layer_scores, fused["channels"], fused["groups"])
                 for kept, option in options.items()}
        accuracy = self.heads_accuracy(params, model, tokenizer, arch, inputs, units, keeps) if len(keeps) > 1 else {}
        chosen = max(keeps, key=lambda kept: accuracy.get(kept, 0.0))  # the first (all heads) on a tie
        counts, keep = options[chosen], keeps[chosen]
        removed = sorted(set(range(units.layers)) - set(keep.layers))
        print(f"structured: {units.layers} -> {len(keep.layers)} layers (removed {removed or 'none'}), MLP width "
              f"{units.intermediate} -> {counts.channels_kept}, heads {units.heads} -> "
              f"{counts.groups_kept * units.group_size} (KV {units.kv_heads} -> {counts.groups_kept}); "
              f"{counts.reduction:.1%} of the decoder-linear parameters removed")
        structure = {"units": asdict(units), "counts": counts.as_dict(), "layers": keep.layers,
                     "removed_layers": removed, "channels": {str(i): v for i, v in keep.channels.items()},
                     "groups": {str(i): v for i, v in keep.groups.items()},
                     "layer_scores": {side: [round(float(v), 6) for v in values]
                                      for side, values in (layers or {}).items()},
                     "layer_score": cfg.structured.layer_score if layers is not None else None}
        if accuracy:
            structure["calibration_accuracy_by_heads"] = {str(kept * units.group_size): round(value, 6)
                                                          for kept, value in accuracy.items()}
        return ScoreResult(structure=structure, notes={"reduction": counts.reduction})

    def heads_accuracy(self, params, model, tokenizer, arch, inputs, units, keeps: dict) -> dict[int, float]:
        """Calibration accuracy (lm-eval on the calibration rows, as evaluation scores) of the model each option
        (KV head groups kept -> ``Keep``, all heads first) makes, computed on ``model`` as the smaller one computes
        (``as_removed``): copies of the output projections, not a second model. An option that answers no more rows
        than the best before it ends the tries: fewer heads than that are not scored."""
        from taskprune.evaluation.accuracy import calibration_accuracy

        accuracy = {}
        for kept, keep in keeps.items():
            with self.as_removed(params.prune, model, arch, keep, units, inputs):
                value = calibration_accuracy(model, tokenizer, inputs.project, params.evaluate.batch_size)
            better = not accuracy or value > max(accuracy.values())
            accuracy[kept] = value
            if not better:
                break
        untried = [kept * units.group_size for kept in keeps if kept not in accuracy]
        print("structured: calibration accuracy by query heads kept per layer: " + ", ".join(
            f"{kept * units.group_size} of {units.heads}: {value:.3f}" for kept, value in accuracy.items())
            + (f" ({', '.join(map(str, untried))} not tried: fewer heads stopped helping)" if untried else ""),
            flush=True)
        return accuracy

    @contextlib.contextmanager
    def as_removed(self, cfg, model, arch, keep, units, inputs) -> Iterator[None]:
        """``model`` computing what the smaller model of ``keep`` computes: the output-projection columns of removed
        MLP channels and head groups zeroed, the kept ones refitted (``refit``), removed layers skipped (equal to
        the surgery's result: test_structured). Those projections get private copies for the while (the model's
        weights may be views of its file) and are put back on exit."""
        from taskprune.units.importance import skipped

        changed = []
        kept = [(module, columns) for _, module, columns in self.output_columns(model, arch, keep, units)]
        try:
            for module, _ in kept:
                changed.append((module, module.weight.data))
                module.weight.data = module.weight.data.clone()
            if cfg.structured.refit:  # from the whole matrix, as the prune step does before the surgery
                self.refit(cfg, model, arch, keep, units, inputs)
            for module, columns in kept:
                gone = torch.ones(arch.weight(module).shape[1], dtype=torch.bool)
                gone[columns] = False
                arch.weight(module)[:, gone] = 0
            with contextlib.ExitStack() as stack:
                for i in sorted(set(range(units.layers)) - set(keep.layers)):
                    stack.enter_context(skipped(model, arch, i))
                yield
        finally:
            for module, weight in changed:
                module.weight.data = weight

    def prune(self, params, model, arch, inputs) -> PruneResult:
        from taskprune.models.architectures.base import Keep, Units

        structure = inputs.structure()
        keep = Keep(layers=structure["layers"], channels={int(k): v for k, v in structure["channels"].items()},
                    groups={int(k): v for k, v in structure["groups"].items()})
        units, counts = Units(**structure["units"]), structure["counts"]
        share = {"channels": 1 - counts["channels_kept"] / units.intermediate,
                 "groups": 1 - counts["groups_kept"] / units.kv_heads}
        per_matrix = {}
        for key in arch.named_linears(model):
            layer, name = key.split(".", 1)
            removed_layer = int(layer) not in keep.layers
            part = share["channels"] if name.startswith(arch.mlp_output.split(".")[0]) else share["groups"]
            per_matrix[key] = 1.0 if removed_layer else round(part, 6)
        if params.prune.structured.refit:
            self.refit(params.prune, model, arch, keep, units, inputs)
        smaller = arch.shrink(model, keep, consume=True)  # the dense copy is used up: one model in memory
        removed = self.removed_by_unit(units, counts)
        heads = counts["groups_kept"] * units.group_size
        described = {
            "decoder layers": f"{units.layers} -> {len(keep.layers)}"
                              + (f" (removed {', '.join(map(str, structure['removed_layers']))})"
                                 if structure["removed_layers"] else ""),
            "MLP width": f"{units.intermediate} -> {counts['channels_kept']} in every kept layer",
            "attention heads": f"{units.heads} -> {heads} (KV heads {units.kv_heads} -> {counts['groups_kept']})",
            "removed parameters by unit": ", ".join(f"{UNIT_NAMES[name]} {share:.0%}" for name, share in removed.items()),
        }
        return PruneResult(
            smaller, compression=f"decoder-linear parameters -{counts['reduction']:.1%} (structured)", sparsity=0.0,
            per_matrix={"name": "reduction_per_matrix", "title": "parameters removed per matrix",
                        "quantity": "share of the matrix's parameters removed", "values": per_matrix},
            facts=dict(method="structured", stats="both", pattern="structured", target_sparsity=0.0,
                       achieved_sparsity=0.0, reduction=counts["reduction"], removed_layers=structure["removed_layers"],
                       layers=len(keep.layers), intermediate_size=counts["channels_kept"],
                       attention_heads=heads,
                       kv_heads=counts["groups_kept"], removed_by_unit=removed,
                       **({"calibration_accuracy_by_heads": structure["calibration_accuracy_by_heads"]}
                          if "calibration_accuracy_by_heads" in structure else {})), removed=described)

    @staticmethod
    def refit(cfg, model, arch, keep, units, inputs) -> None:
        """Kept output-projection columns refitted on the calibration inputs (``units.refit``); the two sides'
        second moments are mixed as the fusion weighs them (``alpha``; one side for its ablation)."""
        from taskprune.lowrank.factors import mixed_moment
        from taskprune.scoring.task_aware import ablation_sides
        from taskprune.units.refit import refit_columns

        sides = ablation_sides(cfg.task_aware.ablation)
        moments = inputs.moments(sides)
        for key, module, columns in Structured.output_columns(model, arch, keep, units):
            h = mixed_moment(moments["general"][key] if "general" in moments else None,
                             moments[sides[-1]][key], cfg.task_aware.alpha if len(sides) == 2 else 0.0)
            weight = arch.weight(module)
            if len(columns) < weight.shape[1]:
                weight[:, columns] = refit_columns(weight, h, columns, cfg.structured.damp)

    @staticmethod
    def output_columns(model, arch, keep, units) -> Iterator[tuple[str, torch.nn.Module, list[int]]]:
        """Each kept layer's two output projections (MLP down, attention output) with the input columns ``keep``
        keeps: ``("LAYER.NAME", module, columns)``; removing units removes exactly those projections' other columns
        (and the rows feeding them), so these are the matrices a refit or an in-place removal touches."""
        from taskprune.units.refit import head_columns

        layers = arch.layers(model)
        for i in keep.layers:
            linears = arch.linears(layers[i])
            yield f"{i}.{arch.mlp_output}", linears[arch.mlp_output], keep.channels[i]
            yield (f"{i}.{arch.attention_output}", linears[arch.attention_output],
                   head_columns(keep.groups[i], units.group_size, units.head_dim))

    @staticmethod
    def removed_by_unit(units, counts: dict) -> dict[str, float]:
        """Each unit type's share of the decoder-linear parameters removed: layers, head groups, MLP channels."""
        kept = units.layers - counts["layers_removed"]
        amounts = {"layers": counts["layers_removed"] * units.layer_params(),
                   "head_groups": kept * (units.kv_heads - counts["groups_kept"]) * units.group_params,
                   "mlp_channels": kept * (units.intermediate - counts["channels_kept"]) * units.channel_params}
        total = sum(amounts.values()) or 1
        return {name: round(amount / total, 4) for name, amount in amounts.items()}
