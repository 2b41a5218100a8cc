"""LoRA recovery: the zero pattern survives the merge, the loss goes down, a killed run resumes to the same
adapter, and test rows never reach training."""

import shutil

import pytest
import torch

from conftest import write_general_text
from taskprune import masks as masklib
from taskprune.config import Params, PruneConfig, RecoverConfig
from taskprune.data import builtin
from taskprune.errors import TaskPruneError
from taskprune.models.loading import load_local, save_model
from taskprune.paths import Project, read_json, write_json
from taskprune.pruning import apply_masks, compute_masks
from taskprune.recovery import (Distillation, batch_indices, check_disjoint, collate, distill_loss, encode, full_model,
                                lora_model, merge_keeping_masks, train_recovery)

ROWS = builtin.sentiment(0)[:48]


def pruned_tiny(model_dir):
    model, tokenizer, arch = load_local(model_dir)
    masks = compute_masks(model, arch, PruneConfig(method="magnitude", sparsity=0.5), None).masks
    apply_masks(model, arch, masks)
    return model, tokenizer, arch, masks


def training_loss(peft_model, tokenizer, examples):
    batch = collate(encode(tokenizer, examples, 64), tokenizer.pad_token_id or 0)
    peft_model.eval()
    with torch.no_grad():
        return peft_model(**batch).loss.item()


def test_merge_keeps_the_zero_pattern_on_every_architecture(tiny_model_dir, tmp_path):
    model, tokenizer, arch, masks = pruned_tiny(tiny_model_dir)
    before = {k: arch.weight(m).clone() for k, m in arch.named_linears(model).items()}
    peft_model = lora_model(model, arch, RecoverConfig(rank=4))
    train_recovery(peft_model, tokenizer, ROWS, RecoverConfig(rank=4, steps=3, learning_rate=0.05, batch_size=4),
               tmp_path / "ckpt", "cpu")
    merged = merge_keeping_masks(peft_model, arch, masks)
    changed = 0
    for key, module in arch.named_linears(merged).items():
        weight = arch.weight(module)
        assert torch.equal(weight != 0, masks[key]), key  # exactly the pruned model's zeros
        changed += int(not torch.allclose(weight, before[key]))
    assert changed > 0  # the merge did move the kept weights


def test_recovery_lowers_the_training_loss(tiny_llama_dir, tmp_path):
    model, tokenizer, arch, _ = pruned_tiny(tiny_llama_dir)
    cfg = RecoverConfig(rank=8, steps=40, learning_rate=5e-3, batch_size=8, dropout=0.0)
    peft_model = lora_model(model, arch, cfg)
    start = training_loss(peft_model, tokenizer, ROWS)
    result = train_recovery(peft_model, tokenizer, ROWS, cfg, tmp_path / "ckpt", "cpu")
    assert training_loss(peft_model, tokenizer, ROWS) < 0.9 * start
    assert [h["step"] for h in result.history] == list(range(1, 41))


def test_a_killed_run_resumes_to_the_same_adapter(tiny_llama_dir, tmp_path):
    from peft import get_peft_model_state_dict

    cfg = RecoverConfig(rank=4, steps=12, learning_rate=1e-2, batch_size=8, checkpoint_every=5, dropout=0.1)

    def fresh():
        model, tokenizer, arch, _ = pruned_tiny(tiny_llama_dir)
        return lora_model(model, arch, cfg), tokenizer

    straight, tokenizer = fresh()
    whole = train_recovery(straight, tokenizer, ROWS, cfg, tmp_path / "a", "cpu")
    killed, _ = fresh()
    train_recovery(killed, tokenizer, ROWS, cfg, tmp_path / "b", "cpu", stop_after=7)  # dies after step 7
    resumed, _ = fresh()
    again = train_recovery(resumed, tokenizer, ROWS, cfg, tmp_path / "b", "cpu")
    assert again.resumed_from == 5  # the last checkpoint before the kill
    assert [h["loss"] for h in again.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-4)
    ours, theirs = get_peft_model_state_dict(resumed), get_peft_model_state_dict(straight)
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in theirs)


def test_distilled_full_training_moves_toward_the_dense_model_and_resumes_to_the_same_weights(tiny_llama_dir, tmp_path):
    cfg = RecoverConfig(train="full", loss="distill", steps=8, learning_rate=2e-3, batch_size=4, checkpoint_every=3)
    teacher = load_local(tiny_llama_dir)[0]
    blocks = torch.randint(1, 200, (12, 16), generator=torch.Generator().manual_seed(0))

    def fresh():
        model, tokenizer, _, _ = pruned_tiny(tiny_llama_dir)
        return full_model(model, cfg), tokenizer

    def kl(model):
        with torch.no_grad():
            return float(distill_loss(model(blocks).logits, teacher(blocks).logits, torch.ones(blocks.shape, dtype=torch.bool)))

    answer_only, tokenizer = fresh()
    train_recovery(answer_only, tokenizer, ROWS, cfg.model_copy(update={"loss": "answer"}), tmp_path / "c", "cpu")
    straight, _ = fresh()
    whole = train_recovery(straight, tokenizer, ROWS, cfg, tmp_path / "a", "cpu", distill=Distillation(teacher, blocks, 10))
    assert kl(straight) < 0.5 * kl(answer_only)  # the KL term keeps the model near the dense one
    assert {"answer_loss", "distill_loss", "loss"} <= set(whole.history[0])
    killed, _ = fresh()
    train_recovery(killed, tokenizer, ROWS, cfg, tmp_path / "b", "cpu", stop_after=5,
                   distill=Distillation(teacher, blocks, 10))
    resumed, _ = fresh()
    again = train_recovery(resumed, tokenizer, ROWS, cfg, tmp_path / "b", "cpu", distill=Distillation(teacher, blocks, 10))
    assert again.resumed_from == 3
    assert [h["loss"] for h in again.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-4)
    theirs = dict(straight.named_parameters())
    assert all(torch.allclose(p, theirs[name], atol=1e-5) for name, p in resumed.named_parameters())


def test_full_training_cannot_keep_an_adapter_apart():
    with pytest.raises(ValueError, match="recover.merge: false keeps a LoRA adapter apart"):
        RecoverConfig(train="full", merge=False)


def test_batches_cycle_through_every_row_each_epoch():
    seen = [i for step in range(5) for i in batch_indices(23, 5, step, seed=3)]
    assert sorted(seen) == list(range(23))
    assert batch_indices(23, 5, 7, 3) == batch_indices(23, 5, 7, 3)


def test_answer_tokens_are_the_only_labels(tiny_llama_dir):
    _, tokenizer, _ = load_local(tiny_llama_dir)
    ids, labels = encode(tokenizer, ROWS[:1], 64)[0]
    answer = tokenizer(" " + ROWS[0].choices[ROWS[0].gold], add_special_tokens=False)["input_ids"]
    assert [t for t in labels if t != -100] == answer and ids[-len(answer):] == answer


def test_test_rows_never_reach_training():
    train, test = ROWS[:30], ROWS[30:]
    assert check_disjoint(train, {ex.id for ex in test}) == [ex.id for ex in train]
    with pytest.raises(TaskPruneError, match="in the test split"):
        check_disjoint(train + test[:1], {ex.id for ex in test})


@pytest.mark.parametrize("merge", [True, False])
def test_recover_stage_trains_on_the_calibration_split_only(tiny_llama_dir, tmp_path, merge, monkeypatch):
    from taskprune.data.schema import read_jsonl
    from taskprune.evaluation.size import paired_decode
    from taskprune.stages import evaluate, run_stage

    project = Project(tmp_path)
    (tmp_path / "task.jsonl").write_text("".join(__import__("json").dumps(ex.to_row()) + "\n" for ex in ROWS))
    params = Params.model_validate({
        "task": {"path": "task.jsonl"},
        "calibration": {"general": {"source": "file", "path": str(write_general_text(tmp_path / "g.txt"))}},
        "evaluate": {"perplexity_docs": 4, "decode_tokens": 2, "limit": 8},
        "recover": {"enabled": True, "steps": 3, "rank": 4, "merge": merge, "checkpoint_every": 2}})
    run_stage("prepare_data", params, project)
    model, tokenizer, arch, masks = pruned_tiny(tiny_llama_dir)
    save_model(model, tokenizer, project.pruned_model)
    write_json(project.pruned_model / "stage.json", {"method": "magnitude"})
    project.masks.mkdir(parents=True)
    masklib.save_masks(project.masks / "masks.safetensors", masks)
    shutil.copytree(tiny_llama_dir, project.dense_model)  # decode is timed against it
    run_stage("recover", params, project)
    info = read_json(project.recovered_model / "stage.json")
    calib = {ex.id for ex in read_jsonl(project.data / "task_calib.jsonl")}
    test = {ex.id for ex in read_jsonl(project.data / "task_test.jsonl")}
    assert set(info["train_ids"]) == calib and not calib & test
    assert info["sparsity"] == pytest.approx(0.5, abs=0.01) and info["merge"] is merge
    assert not (project.state / "checkpoints").exists() or not any((project.state / "checkpoints").iterdir())
    recovered, _, arch = load_local(project.recovered_model)
    for key, module in arch.named_linears(recovered).items():
        assert torch.equal(arch.weight(module) != 0, masks[key]), key
    assert (project.recovered_model / "adapter").is_dir() is (not merge)
    timed = []

    def loaders_only(model, dense, *args):  # decode timed with each model loaded for its own rounds, never both held
        assert not isinstance(model, torch.nn.Module) and not isinstance(dense, torch.nn.Module)
        timed.append(type(model()).__name__)
        return paired_decode(model, dense, *args)

    monkeypatch.setattr(evaluate, "paired_decode", loaders_only)
    result = evaluate.evaluate_model(params, project, "recovered")
    assert 0 <= result["task_accuracy"] <= 1 and result["decode"]["rounds"] == params.evaluate.decode_rounds
    assert timed == ["LlamaForCausalLM" if merge else "PeftModelForCausalLM"] and result["drift"]["layers"]
    assert ("adapter_params" in result) is (not merge)
    shutil.rmtree(project.recovered_model)
