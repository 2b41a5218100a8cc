"""Recovery: a short fine-tune on the task's calibration split that keeps the pruned structure, of a LoRA
adapter (PEFT) or of every remaining weight, on the answer loss or distilled from the dense model.

The loss is the answer's log-likelihood given the query (the same quantity the
multiple-choice evaluation compares), so training teaches the model what the
evaluation asks. After training, either the adapter is merged into the weights
and the pruning mask applied again (the merged model has exactly the pruned
model's zeros), or the adapter is kept apart (``merge: false``) and the pruned
weights stay untouched.

Distillation adds the KL divergence from the dense model's next-token distribution on token blocks of the
task's calibration text and of general text (Minitron's recovery), so the pruned model relearns what the
removed units did and not only the answers.

A checkpoint (the trained weights: adapter or all, optimizer, step, loss history, RNG state) is written
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
from typing import Any

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


def full_model(model, cfg: RecoverConfig):
    """``model`` with every parameter trainable (full fine-tuning of what pruning kept)."""
    torch.manual_seed(cfg.seed)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _trainable_state(model) -> dict[str, torch.Tensor]:
    from peft import PeftModel, get_peft_model_state_dict

    if isinstance(model, PeftModel):
        return get_peft_model_state_dict(model)
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    from peft import PeftModel, set_peft_model_state_dict

    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the ``mask``ed positions of KL(teacher || student) of the next-token distributions."""
    import torch.nn.functional as F

    student = F.log_softmax(student_logits[mask].float(), dim=-1)
    teacher = F.log_softmax(teacher_logits[mask].float(), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


@dataclass
class Distillation:
    """The dense model as teacher and the text it is matched on (token blocks of task and general text)."""

    teacher: object
    blocks: torch.Tensor
    weight: float = 1.0

    def loss(self, model, step: int, batch_size: int, seed: int, device: str) -> torch.Tensor:
        ids = self.blocks[batch_indices(len(self.blocks), batch_size, step, seed + 1)].to(device)
        with torch.no_grad():
            teacher = self.teacher(input_ids=ids, use_cache=False).logits
        student = model(input_ids=ids, use_cache=False).logits
        return self.weight * distill_loss(student, teacher, torch.ones(ids.shape, dtype=torch.bool, device=device))


@dataclass
class Trainable:
    """The pruned model made trainable as ``cfg`` says, and how it will be trained (one line)."""

    model: Any
    parameters: int
    what: str
    distill: Distillation | None = None


def make_trainable(model, arch, cfg: RecoverConfig, teacher=None, blocks: torch.Tensor | None = None) -> Trainable:
    """A LoRA adapter on every prunable linear, or every weight; with ``loss: distill`` the dense ``teacher``
    and the calibration ``blocks`` it is matched on."""
    trained = lora_model(model, arch, cfg) if cfg.train == "lora" else full_model(model, cfg)
    count = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    what = f"LoRA r={cfg.rank} on {len(lora_targets(model, arch))} modules" if cfg.train == "lora" else "all weights"
    distill = None
    if cfg.loss == "distill":
        distill = Distillation(teacher, blocks, cfg.distill_weight)
        what += f", distilled from the dense model on {len(blocks)} task and general text blocks"
    return Trainable(trained, count, what, distill)


def train_recovery(model, tokenizer, train: list[Example], cfg: RecoverConfig, checkpoint_dir: Path,
                   device: str, stop_after: int | None = None, distill: Distillation | None = None) -> TrainResult:
    """Train ``model``'s trainable parameters (a LoRA adapter, or every weight) for ``cfg.steps`` steps on the
    answer loss (plus, with ``distill``, the KL to the dense model), resuming from ``checkpoint_dir``.

    ``stop_after`` ends the loop early (after that many steps in total), as a kill would; tests use it.
    """
    torch.manual_seed(cfg.seed)
    data = encode(tokenizer, train, cfg.max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
    history: list[dict] = []
    start = 0
    path = checkpoint_dir / CHECKPOINT
    if path.exists():
        state = torch.load(path, weights_only=True)
        _load_trainable_state(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history = int(state["step"]), json.loads(state["history"])
        print(f"recover: resuming from the checkpoint at step {start} of {cfg.steps}")
    model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    desc = f"{'LoRA' if cfg.train == 'lora' else 'full'} recovery{' (distill)' if distill else ''}"
    bar = tqdm(range(start, end), desc=desc, unit="step", initial=start, total=cfg.steps)
    for step in bar:
        batch = collate([data[i] for i in batch_indices(len(data), cfg.batch_size, step, cfg.seed)], pad_id)
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        record = {"step": step + 1}
        if distill is not None:
            kl = distill.loss(model, step, cfg.batch_size, cfg.seed, device)
            record["answer_loss"], record["distill_loss"] = round(loss.item(), 5), round(kl.item(), 5)
            loss = loss + kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({**record, "loss": round(loss.item(), 5)})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            torch.save({"trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                        "rng": torch.get_rng_state(), "step": torch.tensor(step + 1),
                        "history": json.dumps(history)}, temporary)
            temporary.replace(path)  # a kill mid-write leaves the previous checkpoint intact
    model.eval()
    return TrainResult(history, start, [ex.id for ex in train])


@torch.no_grad()
def merge_keeping_masks(trained, arch, masks: dict[str, torch.Tensor] | None):
    """Merge the LoRA deltas into the weights (a fully trained model has none), then zero the pruned positions
    again (``masks=None``: a model whose structure is its shape, such as a factorized or a structured one)."""
    from peft import PeftModel

    model = trained.merge_and_unload() if isinstance(trained, PeftModel) else trained
    if masks is not None:
        apply_masks(model, arch, masks)
    return model
