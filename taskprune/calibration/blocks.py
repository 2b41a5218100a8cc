"""The calibration text of a project, as token blocks per side (general text, task text)."""

from __future__ import annotations

import torch

from taskprune.calibration.walk import SIDES
from taskprune.config import CalibrationConfig
from taskprune.data.schema import read_jsonl
from taskprune.data.texts import read_texts
from taskprune.data.tokens import token_blocks
from taskprune.paths import Project


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
