"""calibrate: per-input-channel square sums of every decoder linear, on general and on task text."""

from __future__ import annotations

import torch

from taskprune import tensorfile
from taskprune.calibration import SIDES, collect_input_square_sums, save_moments
from taskprune.data.tokens import token_blocks
from taskprune.config import CalibrationConfig, Params
from taskprune.data.schema import read_jsonl
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.stages.prepare_data import read_texts


def calibration_texts(project: Project) -> dict[str, list[str]]:
    general = read_texts(project.data / "general_calib.jsonl")
    task = [ex.calibration_text() for ex in read_jsonl(project.data / "task_calib.jsonl")]
    return {"general": general, "task": task}


def calibration_blocks(project: Project, cfg: CalibrationConfig, tokenizer, sides=SIDES) -> dict[str, torch.Tensor]:
    """Token blocks (num_samples x seq_len, or fewer when the text is short) of each calibration side."""
    texts = calibration_texts(project)
    blocks = {}
    for side in sides:
        blocks[side] = token_blocks(tokenizer, texts[side], cfg.seq_len, cfg.num_samples)
        if len(blocks[side]) < cfg.num_samples:
            print(f"note: the {side} calibration text fills {len(blocks[side])} of {cfg.num_samples} blocks of "
                  f"{cfg.seq_len} tokens; calibrating on {len(blocks[side])}")
    return blocks


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "calibrate")
    cfg = params.calibration
    device = pick_device(params.model.device)
    model, tokenizer, arch = load_local(project.dense_model, "cpu")  # layers are onloaded one at a time
    moments = params.prune.method == "sieve"  # LLM-Sieve factorises with the full input second moments
    record = {"device": device, "num_samples": cfg.num_samples, "seq_len": cfg.seq_len, "moments": moments}
    with atomic_dir(project.stats) as out, atomic_dir(project.moments) as moments_out:
        for side, ids in calibration_blocks(project, cfg, tokenizer).items():
            started = timer.seconds()
            stats = collect_input_square_sums(model, arch, ids, cfg.batch_size, device, desc=f"calibrate {side}",
                                              moments=moments)
            metadata = {"side": side, "tokens": ids.numel(), "seq_len": cfg.seq_len}
            if moments:
                stats, second = stats
                save_moments(moments_out / f"{side}.safetensors", second, metadata)
            tensorfile.save(stats, out / f"{side}.safetensors", metadata)
            record[f"{side}_seconds"] = round(timer.seconds() - started, 2)
            record[f"{side}_blocks"] = len(ids)
        write_json(out / "stage.json", {k: v for k, v in record.items() if not k.endswith("_seconds")})
        write_json(moments_out / "stage.json", {"moments": moments})
    timer.done(**record)
