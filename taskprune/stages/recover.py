"""recover: LoRA fine-tune of the pruned model on the task's calibration split (params: recover).

Disabled (the default): writes only a stage.json saying so. Enabled: trains, then saves
either the merged model with the pruning mask re-applied, or the untouched pruned
weights plus the adapter in ``adapter/`` (``merge: false``). Checkpoints live in
``.taskprune/checkpoints/recover-<fingerprint of the inputs>`` until the stage ends.
"""

from __future__ import annotations

import shutil

from taskprune import masks as masklib
from taskprune.config import Params
from taskprune.data.schema import read_jsonl
from taskprune.models.loading import load_local, pick_device, save_model
from taskprune.paths import Project, StageTimer, atomic_dir, read_json, write_json
from taskprune.pruning import apply_masks
from taskprune.lowrank import LOWRANK_FILE, is_factorized, save_factorized
from taskprune.recovery import LORA_DIR, check_disjoint, lora_model, lora_targets, merge_keeping_masks, run_fingerprint, train_lora



def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "recover")
    cfg = params.recover
    if not cfg.enabled:
        with atomic_dir(project.recovered_model) as out:
            write_json(out / "stage.json", {"enabled": False})
        timer.done(enabled=False)
        print("recover: disabled (recover.enabled: false)")
        return
    device = pick_device(params.model.device)
    train = read_jsonl(project.data / "task_calib.jsonl")
    train_ids = check_disjoint(train, {ex.id for ex in read_jsonl(project.data / "task_test.jsonl")})
    factorized = is_factorized(project.pruned_model)  # sieve: no masks; LoRA on the factors
    structure = project.pruned_model / LOWRANK_FILE if factorized else project.mask_dir / "masks.safetensors"
    masks = None if factorized else masklib.load_masks(structure)
    checkpoints = project.state / "checkpoints" / "recover-{}".format(run_fingerprint(
        cfg.model_dump_json().encode(), structure.read_bytes(), (project.data / "task_calib.jsonl").read_bytes(),
        (project.pruned_model / "stage.json").read_bytes()))
    model, tokenizer, arch = load_local(project.pruned_model, device)
    peft_model = lora_model(model, arch, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    print(f"recover: LoRA r={cfg.rank} on {len(lora_targets(model, arch))} {'modules' if factorized else 'linears per layer'}, "
          f"{trainable:,} trainable parameters, {cfg.steps} steps on {len(train)} calibration rows ({device})")
    result = train_lora(peft_model, tokenizer, train, cfg, checkpoints, device)
    with atomic_dir(project.recovered_model) as out:
        if cfg.merge:
            recovered = merge_keeping_masks(peft_model, arch, masks)
        else:
            peft_model.save_pretrained(str(out / LORA_DIR))  # safetensors
            recovered = peft_model.unload()  # the pruned weights, untouched
        if factorized:
            achieved = {"all": 0.0}
            save_factorized(recovered, tokenizer, read_json(structure)["ranks"], out)
        else:
            achieved = apply_masks(recovered, arch, masks)  # no-op on the weights; measures the zeros
            save_model(recovered, tokenizer, out)
        write_json(out / "train_log.json", result.history)
        write_json(out / "stage.json", {
            "enabled": True, "merge": cfg.merge, "steps": cfg.steps, "resumed_from": result.resumed_from,
            "train_rows": len(train_ids), "first_loss": result.history[0]["loss"] if result.history else None,
            "final_loss": result.history[-1]["loss"], "lora_parameters": trainable,
            "sparsity": round(sum(achieved.values()) / len(achieved), 6),
            "train_ids": train_ids})
    shutil.rmtree(checkpoints, ignore_errors=True)
    timer.done(steps=cfg.steps, merge=cfg.merge, resumed_from=result.resumed_from, device=device)
    print(f"recover: loss {result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f}")
