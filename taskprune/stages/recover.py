"""recover: fine-tune of the pruned model on the task's calibration split (params: recover).

Disabled (the default): writes only a stage.json saying so. Enabled: trains LoRA on every linear
inside the prunable ones (both factors of a factorized linear), or every weight (``train: full``), on the
answer loss or also distilled from the dense model (``loss: distill``), then saves, in the pruned model's own
format and with its config unchanged, either the merged model with the pruning masks re-applied (when the
result has masks), or the untouched pruned weights plus the adapter in ``adapter/`` (``merge: false``).
Checkpoints live in
``.taskprune/checkpoints/recover-<fingerprint of the inputs>`` until the stage ends.
"""

from __future__ import annotations

import shutil

import torch

from taskprune import masks as masklib
from taskprune.config import Params
from taskprune.data.schema import read_jsonl
from taskprune.models.formats import format_of
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import LORA_DIR, Project, StageTimer, atomic_dir, fingerprint, stage_off, write_json
from taskprune.pruning import apply_masks
from taskprune.calibration.blocks import calibration_blocks
from taskprune.frontier import kept_for
from taskprune.recovery import CHECKPOINT, check_disjoint, make_trainable, merge_keeping_masks, train_recovery


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "recover")
    cfg = params.recover
    if not cfg.enabled:
        stage_off(project.recovered_model, timer)
        print("recover: disabled (recover.enabled: false)")
        return
    device = pick_device(params.model.device)
    train = read_jsonl(project.data / "task_calib.jsonl")
    train_ids = check_disjoint(train, {ex.id for ex in read_jsonl(project.data / "task_test.jsonl")})
    mask_file = project.mask_dir / "masks.safetensors"
    masks = masklib.load_masks(mask_file) if mask_file.is_file() else None  # a method that removes, not zeroes
    structure = sorted(project.pruned_model.glob("*.json")) + ([mask_file] if masks is not None else [])
    checkpoints = project.state / "checkpoints" / "recover-{}".format(fingerprint(
        cfg.model_dump_json().encode(), (project.data / "task_calib.jsonl").read_bytes(),
        *(path.read_bytes() for path in structure)))
    trained_before = kept_for(project, params, "recover") if params.target.enabled else None
    if trained_before is not None and not checkpoints.exists() and (trained_before / CHECKPOINT).is_file():
        shutil.copytree(trained_before, checkpoints)  # the frontier trained this point: its adapter, not again
        print("recover: the frontier trained this point's adapter with these settings; reusing it")
    model, tokenizer, arch = load_local(project.pruned_model, device, owned=True)  # trained
    config = model.config.to_dict()
    teacher = blocks = None
    if cfg.loss == "distill":
        teacher = load_local(project.dense_model, device)[0]
        blocks = calibration_blocks(project, params.calibration, tokenizer)
        blocks = torch.cat([blocks["task"], blocks["general"]])
    made = make_trainable(model, arch, cfg, teacher, blocks)
    trained, trainable, what = made.model, made.parameters, made.what
    print(f"recover: {what}, {trainable:,} trainable parameters, {cfg.steps} steps on {len(train)} calibration "
          f"rows ({device})")
    result = train_recovery(trained, tokenizer, train, cfg, checkpoints, device, distill=made.distill)
    with atomic_dir(project.recovered_model) as out:
        if cfg.merge:
            recovered = merge_keeping_masks(trained, arch, masks)
        else:
            trained.save_pretrained(str(out / LORA_DIR))  # safetensors
            recovered = trained.unload()  # the pruned weights, untouched
        if recovered.config.to_dict() != config:
            raise RuntimeError("recover: the model's config changed in training; the pruned structure must stay")
        # masks: no-op on the weights after the merge re-applied them; measures the zeros
        achieved = apply_masks(recovered, arch, masks) if masks is not None else {"all": 0.0}
        format_of(project.pruned_model).save(recovered, tokenizer, out)
        write_json(out / "train_log.json", result.history)
        write_json(out / "stage.json", {
            "enabled": True, "merge": cfg.merge, "steps": cfg.steps, "resumed_from": result.resumed_from,
            "train_rows": len(train_ids), "first_loss": result.history[0]["loss"] if result.history else None,
            "final_loss": result.history[-1]["loss"], "train": cfg.train, "loss": cfg.loss,
            f"{'lora' if cfg.train == 'lora' else 'trainable'}_parameters": trainable,
            "sparsity": round(sum(achieved.values()) / len(achieved), 6),
            "train_ids": train_ids})
    shutil.rmtree(checkpoints, ignore_errors=True)
    if trained_before is not None:
        shutil.rmtree(trained_before, ignore_errors=True)
    timer.done(steps=cfg.steps, merge=cfg.merge, resumed_from=result.resumed_from, device=device)
    print(f"recover: loss {result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f}")
