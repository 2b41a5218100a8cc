"""evaluate: task accuracy and perplexity (lm-eval), size and decode speed, of the dense, pruned or recovered model.

Evaluating ``recovered`` (the last evaluation; with recovery disabled it only records that) also writes
``metrics.json``, the DVC metrics file that ``dvc exp show`` reads, combining the models and the stage
timings.
"""

from __future__ import annotations

import gc

from taskprune.config import Params
from taskprune.data.texts import read_texts
from taskprune.data.schema import read_jsonl
from taskprune.evaluation import evaluate_loaded, size_metrics
from taskprune.evaluation.size import paired_decode
from taskprune.evaluation.drift import drift_sequences, layer_drift
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import LORA_DIR, Project, StageTimer, read_json, write_json
from taskprune.pipeline import producer, stage_records


def recovery_enabled(project: Project) -> bool:
    return read_json(project.recovered_model / "stage.json")["enabled"]


def with_adapter(model, directory):
    """``model`` with the LoRA adapter saved beside it, where recovery kept one unmerged (``merge: false``)."""
    if not (directory / LORA_DIR).is_dir():
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(directory / LORA_DIR))


def evaluate_model(params: Params, project: Project, which: str) -> dict:
    device = pick_device(params.model.device)
    directory = project.path(f"{which}_model")
    model, tokenizer, arch = load_local(directory, device)
    sizes = size_metrics(model, arch, directory)
    layers = arch.layers(model)  # before an adapter wraps the model (its hooks still see every forward pass)
    bare, model = model, with_adapter(model, directory)
    if model is not bare:  # recovered with merge: false: the pruned weights + a LoRA adapter
        lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
        sizes.update(params=sizes["params"] + lora, nonzero_params=sizes["nonzero_params"] + lora,
                     adapter_params=lora,
                     bytes_on_disk=sizes["bytes_on_disk"] + sum(
                         f.stat().st_size for f in (directory / LORA_DIR).glob("*.safetensors")))
    print(f"evaluating {which} model on the test split and held-out general text ...", flush=True)
    held_out = read_texts(project.data / "general_eval.jsonl")
    side_by_side = which != "dense" and (project.dense_model / "config.json").is_file()
    result = evaluate_loaded(model, tokenizer, project.data / "task_test.jsonl", held_out, params.evaluate, device,
                             time_decode=not side_by_side)
    result.update(sizes)
    if side_by_side:
        dense = load_local(project.dense_model, device)[0]
        removed = read_json(project.pruned_model / "stage.json").get("removed_layers", [])
        sequences = drift_sequences(tokenizer, read_jsonl(project.data / "task_test.jsonl"), held_out)
        # where, layer by layer, the compressed model departs from dense
        result["drift"] = layer_drift(model, layers, dense, arch.layers(dense), sequences, device, removed)
        del model, bare, layers, dense
        gc.collect()
        # decode timed next to dense, rounds interleaved, each loaded for its own timing (one in memory at a time)
        result["decode"] = paired_decode(lambda: with_adapter(load_local(directory, device, owned=True)[0], directory),
                                         lambda: load_local(project.dense_model, device, owned=True)[0], tokenizer,
                                         params.evaluate.decode_tokens, device, params.evaluate.decode_rounds)
        result["tokens_per_s"] = result["decode"]["tokens_per_s"][1]
    return result


def run(params: Params, project: Project, which: str = "pruned") -> None:
    timer = StageTimer(project, producer(f"eval_{which}").name)
    data_info = read_json(project.data / "stage.json")
    if which == "recovered" and not recovery_enabled(project):
        write_json(project.eval_file("recovered"), {"enabled": False})
        timer.done(enabled=False)
    else:
        result = evaluate_model(params, project, which)
        if which == "dense":
            result["chance_accuracy"] = data_info["chance_accuracy"]
        write_json(project.eval_file(which), result)
        timer.done(device=pick_device(params.model.device))
        decode = result.get("decode")
        paired = (f" ({decode['speedup']:.2f}x dense side by side"
                  + (", within noise)" if decode["within_noise"] else ")")) if decode else ""
        print(f"{which}: task accuracy {result['task_accuracy']:.4f}, perplexity {result['perplexity']:.2f}, "
              f"{result['tokens_per_s']:.1f} tokens/s{paired}")
    if which == "recovered":
        metrics = build_metrics(params, project, data_info)
        write_json(project.metrics, metrics)
        write_json(project.summary, summary(metrics))
        per_matrix = read_json(project.pruned_model / "stage.json")["per_matrix"]
        layers = per_layer(per_matrix["values"])
        final = read_json(project.eval_file("recovered" if "recovered" in metrics else "pruned"))
        drift = {row["layer"]: row for row in final.get("drift", {}).get("layers", [])}
        for row in layers:  # `dvc plots show`: the method's quantity and the drift from dense, one row per layer
            row.update({f"drift_{kind}": value for kind, value in drift.get(row["layer"], {}).items() if kind != "layer"})
        write_json(project.layer_plot, {"quantity": per_matrix["quantity"], "layers": layers})


def summary(metrics: dict) -> dict:
    """The few numbers people compare first across runs and experiments, flat enough for one table row."""
    dense, final = metrics["dense"], metrics.get("recovered", metrics["pruned"])
    out = {"accuracy": {"dense": dense["task_accuracy"], "pruned": metrics["pruned"]["task_accuracy"]}}
    if "recovered" in metrics:
        out["accuracy"]["recovered"] = final["task_accuracy"]
    out["accuracy_change"] = round(final["task_accuracy"] - dense["task_accuracy"], 4)
    out["params_removed"] = round(1 - final["decoder_linear_nonzero"] / dense["decoder_linear_nonzero"], 4) \
        if "decoder_linear_nonzero" in dense else None
    out["bytes_ratio"] = round(final["bytes_on_disk"] / dense["bytes_on_disk"], 4)
    out["decode_speedup"] = round(final["tokens_per_s"] / dense["tokens_per_s"], 3) if dense.get("tokens_per_s") else None
    out["perplexity"] = {"dense": dense["perplexity"], "final": final["perplexity"]}
    return {k: v for k, v in out.items() if v is not None}


def per_layer(values: dict[str, float]) -> list[dict]:
    """The per-matrix quantity averaged over each decoder layer (keys start with the layer index)."""
    layers: dict[int, list[float]] = {}
    for key, value in values.items():
        head = key.split(".", 1)[0]
        if head.isdigit():
            layers.setdefault(int(head), []).append(float(value))
    return [{"layer": layer, "value": round(sum(v) / len(v), 4)} for layer, v in sorted(layers.items())]


def _public(result: dict) -> dict:
    """A model's evaluation without its per-question items and per-layer drift (kept in its own eval file)."""
    return {k: v for k, v in result.items() if k not in ("items", "drift")}


def build_metrics(params: Params, project: Project, data_info: dict) -> dict:
    dense = read_json(project.eval_file("dense"))
    pruned_public = _public(read_json(project.eval_file("pruned")))
    pruned_info = read_json(project.pruned_model / "stage.json")
    pruned_public["sparsity"] = pruned_info["sparsity"]
    records = stage_records(project)
    if not recovery_enabled(project):  # a disabled recovery's quick records are not part of this result
        records = {k: v for k, v in records.items() if k not in ("recover", "evaluate_recovered")}
    seconds = {stage: rec["seconds"] for stage, rec in records.items()}
    metrics = {
        "task": data_info["task"],
        "method": params.prune.label,
        "dense": _public(dense),
        "pruned": pruned_public,
        "stage_seconds": seconds,
        "run_seconds": round(sum(seconds.values()), 2),
    }
    frontier_file = project.frontier / "frontier.json"
    if params.target.enabled and frontier_file.is_file():  # target mode: the budget and the point chosen
        frontier = read_json(frontier_file)
        metrics["target"] = {**frontier["budget"], "objective": frontier["objective"],
                             "confidence": params.target.confidence,
                             "dense_validation_accuracy": frontier["dense"]["validation_accuracy"],
                             "validation_examples": frontier["validation_examples"],
                             "points": len(frontier["points"]), "choice": frontier["choice"]}
    if pruned_info.get("removed"):  # what a method that removes units removed, in words
        metrics["removed"] = pruned_info["removed"]
    search_file = project.search / "allocation.json"
    if search_file.is_file():  # a per-matrix allocation (searched, or a method's uniform one)
        search = read_json(search_file)
        metrics["search"] = {k: search[k] for k in ("kind", "allocation_rule", "objective", "reduction", "budget",
                                                     "cost", "dense_cost") if k in search}
        metrics["search"].update({k: search[k] for k in ("uniform_fitness", "best_fitness") if k in search})
        metrics["search"]["generations"] = len(search.get("history", []))
    if recovery_enabled(project):
        recovered = _public(read_json(project.eval_file("recovered")))
        info = read_json(project.recovered_model / "stage.json")
        recovered["sparsity"] = info["sparsity"]
        metrics["recovered"] = recovered
        metrics["recovery"] = {k: info[k] for k in ("merge", "steps", "first_loss", "final_loss", "lora_parameters",
                                                    "trainable_parameters") if k in info}
        if (info.get("train"), info.get("loss")) not in ((None, None), ("lora", "answer")):
            metrics["recovery"].update(train=info["train"], loss=info["loss"])
        metrics["recovery"]["minutes"] = round(records.get("recover", {}).get("seconds", 0) / 60, 2)
    return metrics
