"""LoRA recovery: a short PEFT fine-tune on the task's calibration split that keeps the pruned structure.

The loss is the answer's log-likelihood given the query (the same quantity the
multiple-choice evaluation compares), so training teaches the model what the
evaluation asks. After training, either the adapter is merged into the weights
and the pruning mask applied again (the merged model has exactly the pruned
model's zeros), or the adapter is kept apart (``merge: false``) and the pruned
weights stay untouched.

A checkpoint (LoRA adapter weights, optimizer, step, loss history, RNG state) is written
every ``checkpoint_every`` steps; a killed run started again with the same inputs
continues from the last one. Batches come from a seeded permutation per epoch, so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from taskprune.config import RecoverConfig
from taskprune.data.answers import collate, encode
from taskprune.data.schema import Example
from taskprune.errors import TaskPruneError
from taskprune.pruning import apply_masks

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    history: list[dict]          # {"step", "loss"} per step
    resumed_from: int            # 0 when it started fresh
    train_ids: list[str]


def check_disjoint(train: list[Example], test_ids: set[str]) -> list[str]:
    """Ids of the training rows; refuses to train when any of them is in the test split."""
    ids = [ex.id for ex in train]
    leaked = sorted(set(ids) & test_ids)
    if leaked:
        raise TaskPruneError(f"recover: {len(leaked)} training rows are in the test split (e.g. {leaked[0]!r}); "
                             "recovery trains on the calibration split only")
    return ids


def batch_indices(count: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The example indices of training step ``step``: a seeded permutation per epoch, cycled."""
    per_epoch = math.ceil(count / batch_size)
    epoch, position = divmod(step, per_epoch)
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[position * batch_size:(position + 1) * batch_size]


def lora_targets(model, arch) -> list[str]:
    """PEFT ``target_modules``: the module path of every ``nn.Linear`` inside the prunable linears (a plain
    linear itself; both factors of a factorized one)."""
    from torch import nn

    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(leaf)] for module in arch.named_linears(model).values() for leaf in module.modules()
            if isinstance(leaf, nn.Linear) or (leaf is module and not list(module.children()))]


def lora_model(model, arch, cfg: RecoverConfig):
    """``model`` wrapped with LoRA on the architecture's prunable linears."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)  # the LoRA init is random: the same seed gives the same adapter
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=lora_targets(model, arch), fan_in_fan_out=arch.weight_is_in_out,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train_lora(peft_model, tokenizer, train: list[Example], cfg: RecoverConfig, checkpoint_dir: Path,
               device: str, stop_after: int | None = None) -> TrainResult:
    """Train the LoRA parameters of ``peft_model`` for ``cfg.steps`` steps, resuming from ``checkpoint_dir``.

    ``stop_after`` ends the loop early (after that many steps in total), as a kill would; tests use it.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(cfg.seed)
    data = encode(tokenizer, train, cfg.max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
    history: list[dict] = []
    start = 0
    path = checkpoint_dir / CHECKPOINT
    if path.exists():
        state = torch.load(path, weights_only=True)
        set_peft_model_state_dict(peft_model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history = int(state["step"]), json.loads(state["history"])
        print(f"recover: resuming from the checkpoint at step {start} of {cfg.steps}")
    peft_model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(range(start, end), desc="LoRA recovery", unit="step", initial=start, total=cfg.steps)
    for step in bar:
        batch = collate([data[i] for i in batch_indices(len(data), cfg.batch_size, step, cfg.seed)], pad_id)
        loss = peft_model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": round(loss.item(), 5)})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            torch.save({"adapter": get_peft_model_state_dict(peft_model), "optimizer": optimizer.state_dict(),
                        "rng": torch.get_rng_state(), "step": torch.tensor(step + 1),
                        "history": json.dumps(history)}, temporary)
            temporary.replace(path)  # a kill mid-write leaves the previous checkpoint intact
    peft_model.eval()
    return TrainResult(history, start, [ex.id for ex in train])


@torch.no_grad()
def merge_keeping_masks(peft_model, arch, masks: dict[str, torch.Tensor] | None):
    """Merge the LoRA deltas into the weights, then zero the pruned positions again
    (``masks=None``: a factorized model, whose factors keep their ranks when merged)."""
    model = peft_model.merge_and_unload()
    if masks is not None:
        apply_masks(model, arch, masks)
    return model
