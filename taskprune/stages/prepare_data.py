"""prepare_data: task examples split into calibration/test, general text split into calibration/evaluation."""

from __future__ import annotations

from taskprune.config import Params
from taskprune.data import general
from taskprune.data.schema import split, write_jsonl
from taskprune.data.task import load_task, source_fingerprint, task_label
from taskprune.data.texts import write_texts
from taskprune.paths import Project, StageTimer, atomic_dir, write_json


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "prepare_data")
    examples = load_task(params, project)
    calib, validation, test = split(examples, params.task.calib_fraction, params.task.seed,
                                    params.task.validation_fraction)
    passages = general.load_passages(params.calibration.general, project.root, project.downloads)
    pool, eval_docs = general.split_general(passages, params.calibration.seed, params.evaluate.perplexity_docs)
    chance = sum(1 / len(ex.choices) for ex in test) / len(test)
    with atomic_dir(project.data) as out:
        write_jsonl(out / "task_calib.jsonl", calib)
        write_jsonl(out / "task_test.jsonl", test)
        if validation:
            write_jsonl(out / "task_validation.jsonl", validation)
        write_texts(out / "general_calib.jsonl", pool)
        write_texts(out / "general_eval.jsonl", eval_docs)
        write_json(out / "stage.json", dict(
            task=task_label(params), task_source=params.task.path or f"built-in:{params.task.name}",
            task_fingerprint=source_fingerprint(params, project),
            calib_examples=len(calib), **({"validation_examples": len(validation)} if validation else {}),
            test_examples=len(test), chance_accuracy=round(chance, 6),
            general_source=params.calibration.general.source, general_passages=len(pool), general_eval_docs=len(eval_docs)))
    timer.done()
    held = f"{len(validation)} validation / " if validation else ""
    print(f"task {task_label(params)}: {len(calib)} calibration / {held}{len(test)} test examples "
          f"(chance {chance:.3f}); general text: {len(pool)} passages, {len(eval_docs)} held-out documents")
