"""Hashes of what every method writes on a tiny model: the record that a refactoring changed no behaviour.

``python tests/behaviour.py OUT.json`` runs each configuration below through the stage functions
(in this process, no DVC, no MLflow) on a tiny random Llama and writes, per configuration, the sha256
of its masks, updated weights, factors, search allocation, pruned and recovered checkpoints and
``metrics.json`` (without the fields that measure time). ``tests/data/behaviour_hashes.json`` holds
the hashes the code made before the method plug-in refactoring (commit 87dc17c);
``tests/test_behaviour.py`` recomputes them and compares.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

BASE = {"calibration.num_samples": 4, "calibration.seq_len": 32, "evaluate.perplexity_docs": 4,
        "evaluate.perplexity_seq_len": 32, "evaluate.decode_tokens": 2, "evaluate.batch_size": 16,
        "evaluate.limit": 24, "search.population": 4, "search.generations": 2, "search.examples": 8,
        "task.validation_fraction": 0.0, "target.max_accuracy_drop": None}  # fixed-level mode, as recorded

CONFIGS: dict[str, dict] = {
    "magnitude": {"prune.method": "magnitude"},
    "wanda-general": {"prune.method": "wanda"},
    "wanda-task-2of4": {"prune.method": "wanda", "prune.stats": "task", "prune.pattern": "2:4"},
    "wanda-owl": {"prune.method": "wanda", "prune.allocation": "owl"},
    "wanda-search": {"prune.method": "wanda", "prune.allocation": "search"},
    "sparsegpt": {"prune.method": "sparsegpt", "prune.sparsegpt.blocksize": 32},
    "task_aware-wanda": {"prune.method": "task_aware"},
    "task_aware-sparsegpt-owl": {"prune.method": "task_aware", "prune.base": "sparsegpt",
                                 "prune.sparsegpt.blocksize": 32, "prune.allocation": "owl"},
    "sieve-uniform": {"prune.method": "sieve"},
    "sieve-search": {"prune.method": "sieve", "prune.allocation": "search"},
    "wanda-lora": {"prune.method": "wanda", "recover.enabled": True, "recover.steps": 3, "recover.batch_size": 4},
    "sieve-lora": {"prune.method": "sieve", "recover.enabled": True, "recover.steps": 3, "recover.batch_size": 4,
                   "recover.merge": False},
}

HASHED = ("artifacts/masks", "artifacts/updates", "artifacts/search", "artifacts/model/pruned",
          "artifacts/model/recovered")
UNHASHED = {"stage.json", "adapter_config.json"}
TIME_FIELDS = {"stage_seconds", "run_seconds", "tokens_per_s", "minutes", "decode"}


def _without_time(tree):
    if isinstance(tree, dict):
        return {k: _without_time(v) for k, v in tree.items() if k not in TIME_FIELDS}
    return tree


def file_hashes(root: Path) -> dict[str, str]:
    hashes = {}
    for folder in HASHED:
        for path in sorted((root / folder).rglob("*")):
            # stage.json holds times; PEFT's adapter_config.json names the (temporary) base model directory
            if path.is_file() and path.suffix in (".safetensors", ".json") and path.name not in UNHASHED:
                hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    metrics = json.dumps(_without_time(json.loads((root / "metrics.json").read_text())), sort_keys=True)
    hashes["metrics.json"] = hashlib.sha256(metrics.encode()).hexdigest()[:16]
    return hashes


def stage_calls() -> list[tuple[str, dict]]:
    """The stage order, with evaluate's model option, in this version's spelling."""
    from taskprune import pipeline, stages

    if hasattr(pipeline, "WORK"):  # the pipeline table: every stage but register, in order
        return [(s, {}) for s in pipeline.WORK if s != "register"]
    order = ["fetch_model", "prepare_data", "calibrate", "score", "search", "prune"]
    names = getattr(stages, "STAGES", ())
    if "evaluate_dense" in names:
        return [(s, {}) for s in order + ["evaluate_dense", "evaluate", "recover", "evaluate_recovered"]]
    return [(s, {}) for s in order] + [("evaluate", {"which": "dense"}), ("evaluate", {"which": "pruned"}),
                                       ("recover", {}), ("evaluate", {"which": "recovered"})]


def run_config(work: Path, name: str, settings: dict, model_dir: Path, task_file: Path, general: Path) -> dict:
    import torch

    from taskprune import config
    from taskprune.paths import Project
    from taskprune.stages import run_stage

    root = work / name
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    merged = {"model.name": str(model_dir), "task.path": str(task_file), "calibration.general.source": "file",
              "calibration.general.path": str(general), **BASE, **settings}
    config.write_overrides(root / "params.yaml", [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                  for k, v in merged.items()])
    project = Project(root)
    for stage, options in stage_calls():
        torch.manual_seed(0)
        run_stage(stage, config.load(project.params_file), project, **options)
    return file_hashes(root)


def main(out: str) -> None:
    sys.path.insert(0, str(HERE))
    import torch

    from conftest import make_tiny_model, train_tokenizer, write_general_text
    from taskprune import env
    from taskprune.data import builtin

    env.apply()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="taskprune-behaviour-") as tmp:
        work = Path(tmp)
        tokenizer = train_tokenizer(work / "tokenizer")
        model = make_tiny_model("llama", tokenizer, work / "model")
        task = work / "task.jsonl"
        task.write_text("".join(json.dumps(ex.to_row()) + "\n" for ex in builtin.sentiment(0)[:80]))
        general = write_general_text(work / "general.txt")
        for name, settings in CONFIGS.items():
            results[name] = run_config(work, name, settings, model, task, general)
            print(f"{name}: {len(results[name])} files hashed", flush=True)
    Path(out).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
