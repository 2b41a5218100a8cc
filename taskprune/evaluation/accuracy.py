"""Task accuracy through lm-eval: a ``multiple_choice`` task written from the test JSONL (acc, acc_norm), the
model passed in memory (``HFLM(pretrained=model)``), and a prior-corrected accuracy next to it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import yaml

MC_TASK = "taskprune_mc"


def write_task_yaml(directory: Path, test_jsonl: Path) -> None:
    """An lm-eval task over the test JSONL: prompt ``query``, continuations ``choices``, answer ``gold``."""
    mc = {
        "task": MC_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(test_jsonl.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    (directory / f"{MC_TASK}.yaml").write_text(yaml.safe_dump(mc, sort_keys=False), encoding="utf-8")


def run_lm_eval(model, tokenizer, test_jsonl: Path, batch_size: int, limit: int | None, device: str) -> dict:
    """Task accuracy (acc, acc_norm) and per-item correctness, through lm-eval."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="taskprune-lmeval-") as tmp:
        write_task_yaml(Path(tmp), test_jsonl)
        hf_logger = logging.getLogger("lm_eval.models.huggingface")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)  # its warnings about passing a loaded model concern multi-GPU launches
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        finally:
            hf_logger.setLevel(level)
        results = simple_evaluate(
            model=lm,
            tasks=[MC_TASK],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            bootstrap_iters=0,
            limit=limit,
            log_samples=True,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        )
    mc = results["results"][MC_TASK]
    scored = [(s["doc"]["choices"], [ll for ll, _ in s["filtered_resps"]], s["doc"]["gold"])
              for s in results["samples"][MC_TASK]]
    items = sorted(((s["doc"].get("id", str(s["doc_id"])), int(s["acc"])) for s in results["samples"][MC_TASK]))
    return {
        "task_accuracy": mc["acc,none"],
        "task_accuracy_norm": mc["acc_norm,none"],
        "task_accuracy_prior_corrected": prior_corrected_accuracy(scored),
        "test_examples": len(items),
        "items": {doc_id: correct for doc_id, correct in items},
    }


def calibration_accuracy(model, tokenizer, project, batch_size: int) -> float:
    """Accuracy of ``model`` on the task's calibration rows (lm-eval, as evaluation scores), on its own device: how
    a method compares variants of a model without touching the validation or test split."""
    return run_lm_eval(model, tokenizer, project.data / "task_calib.jsonl", batch_size, None,
                       str(next(model.parameters()).device))["task_accuracy"]


def prior_corrected_accuracy(scored: list[tuple[list[str], list[float], int]], min_share: float = 0.05) -> float | None:
    """Accuracy after removing each answer string's prior: from every choice's log-likelihood
    subtract the mean log-likelihood that string gets over the test set.

    A pruned model that leans toward one label (say "negative") gains nothing from the lean
    here, while raw accuracy can flatter or hide it. Defined for tasks whose choices come from
    a fixed label set (every choice string in at least ``min_share`` of the items); ``None`` otherwise.
    """
    totals: dict[str, list[float]] = {}
    for choices, lls, _ in scored:
        for choice, ll in zip(choices, lls):
            totals.setdefault(choice, []).append(ll)
    if not scored or min(len(v) for v in totals.values()) < min_share * len(scored):
        return None
    prior = {choice: sum(v) / len(v) for choice, v in totals.items()}
    correct = 0
    for choices, lls, gold in scored:
        corrected = [ll - prior[c] for c, ll in zip(choices, lls)]
        correct += int(max(range(len(choices)), key=corrected.__getitem__) == gold)
    return correct / len(scored)

