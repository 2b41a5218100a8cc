"""Structured pruning: exact surgery per architecture, unit counts and their errors, fusion at unit level, and
one run through the stage functions whose result loads with plain transformers and from MLflow, in processes
that never import TaskPrune."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model, write_general_text
from taskprune.config import StructuredConfig, TaskAwareConfig
from taskprune.errors import TaskPruneError
from taskprune.models.architectures import architecture_for
from taskprune.models.architectures.base import Keep, Units
from taskprune.models.loading import load_local
from taskprune.scoring.task_aware import fuse_units
from taskprune.units import head_options, unit_counts
from taskprune.units.importance import skipped

SMOLLM2 = Units(layers=30, heads=9, kv_heads=3, head_dim=64, hidden=576, intermediate=1536)
SURGERY = ["llama", "qwen2", "mistral", "gemma3", "qwen2-sliding"]


@pytest.mark.parametrize("arch_name", SURGERY)
def test_surgery_gives_the_model_with_those_units_zeroed_and_that_layer_skipped(arch_name, tokenizer_dir, tmp_path):
    """Removing MLP channels = zeroing their down-projection columns, removing a head group = zeroing its
    output-projection columns, removing a layer = skipping it: the smaller model's logits equal the dense
    model's with those changes, to the last bit."""
    model, _, arch = load_local(make_tiny_model(arch_name, tokenizer_dir, tmp_path / "model"))
    units = arch.units(model.config)
    layers = units.layers
    keep = Keep(layers=[i for i in range(layers) if i != 1],
                channels={i: list(range(i % 2, units.intermediate, 2)) for i in range(layers)},
                groups={i: [i % units.kv_heads] for i in range(layers)})
    smaller = arch.shrink(model, keep)
    ids = torch.randint(1, 200, (2, 24))
    group_width = units.group_size * units.head_dim
    with torch.no_grad():
        for i, layer in enumerate(arch.layers(model)):
            linears = arch.linears(layer)
            down = arch.weight(linears[arch.mlp_output])
            gone = torch.ones(down.shape[1], dtype=torch.bool)
            gone[keep.channels[i]] = False
            down[:, gone] = 0
            out = arch.weight(linears[arch.attention_output])
            kept = keep.groups[i][0]
            gone = torch.ones(out.shape[1], dtype=torch.bool)
            gone[kept * group_width:(kept + 1) * group_width] = False
            out[:, gone] = 0
        with skipped(model, arch, 1):
            expected = model(ids).logits
        got = smaller(ids).logits
    assert torch.equal(expected, got)
    config = smaller.config
    assert (config.num_hidden_layers, config.intermediate_size) == (layers - 1, units.intermediate // 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (units.group_size, 1)
    if getattr(model.config, "layer_types", None):
        assert config.layer_types == [model.config.layer_types[i] for i in keep.layers]
    assert smaller.get_output_embeddings().weight.data_ptr() == smaller.get_input_embeddings().weight.data_ptr()
    # handing the model over (what the prune step does): the same smaller model, the original's sliced and
    # removed tensors released as the surgery goes (about one model's memory instead of three)
    handed = load_local(tmp_path / "model")[0]
    used = arch.shrink(handed, keep, consume=True)
    with torch.no_grad():
        assert torch.equal(used(ids).logits, got)
    assert all(arch.weight(module).numel() == 0 for module in arch.named_linears(handed).values())
    assert not [name for name, t in [*used.named_parameters(), *used.named_buffers()] if t.is_meta]


@pytest.mark.parametrize("arch_name", ["gpt2", "opt"])
def test_architectures_without_surgery_say_so(arch_name):
    from types import SimpleNamespace

    arch = architecture_for(arch_name)
    assert not arch.shrinkable
    with pytest.raises(TaskPruneError, match=f"architecture '{arch_name}': structured pruning .* not supported"):
        arch.units(SimpleNamespace(model_type=arch_name))


def test_unit_counts_meet_the_budget_with_uniform_widths():
    width = unit_counts(SMOLLM2, StructuredConfig(reduction=0.25))
    assert width.layers_removed == 0 and width.groups_kept == 3 and width.channels_kept % 8 == 0
    assert abs(width.reduction - 0.25) < 0.005
    depth = unit_counts(SMOLLM2, StructuredConfig(reduction=0.25, depth=1.0))
    assert depth.layers_removed == 8 and depth.channels_kept == 1536 and abs(depth.reduction - 0.25) < 0.02
    heads = unit_counts(SMOLLM2, StructuredConfig(reduction=0.4, depth=0.25, keep_heads=6))
    assert heads.groups_kept == 2 and heads.layers_removed == 3 and abs(heads.reduction - 0.4) < 0.005


def test_auto_heads_offers_all_heads_and_fewer_groups_within_the_reduction():
    def auto(reduction: float) -> StructuredConfig:
        return StructuredConfig(reduction=reduction, keep_heads="auto")

    assert head_options(SMOLLM2, auto(0.05)) == [3]  # one group per layer is 8.3 %
    assert head_options(SMOLLM2, auto(0.1)) == [3, 2]
    assert head_options(SMOLLM2, auto(0.4)) == [3, 2, 1]
    assert head_options(SMOLLM2, StructuredConfig(reduction=0.4, keep_heads=6)) == [2]
    assert head_options(SMOLLM2, StructuredConfig(reduction=0.4)) == [3]  # the default: all heads
    many = Units(layers=24, heads=32, kv_heads=32, head_dim=64, hidden=2048, intermediate=8192)
    assert head_options(many, auto(0.1)) == [32, 26, 20]  # at most three, whatever the heads
    one = Units(layers=18, heads=4, kv_heads=1, head_dim=256, hidden=640, intermediate=2048)  # Gemma-3-270M
    assert head_options(one, auto(0.4)) == [1]
    for kept in head_options(SMOLLM2, auto(0.2)):  # each option meets the budget
        assert abs(unit_counts(SMOLLM2, auto(0.2), kept).reduction - 0.2) < 0.005


@pytest.mark.parametrize("settings, message", [
    ({"keep_heads": 4}, r"prune\.structured\.keep_heads: 4 query heads is not a whole number of head groups"),
    ({"keep_heads": 12}, r"prune\.structured\.keep_heads: 12"),
    ({"reduction": 0.99, "depth": 1.0}, r"would remove every one of the 30 decoder layers"),
    ({"reduction": 0.9}, r"prune\.structured\.reduction 0\.9 would remove every MLP channel"),
])
def test_impossible_unit_counts_name_the_parameter(settings, message):
    with pytest.raises(ValueError, match=message):
        unit_counts(SMOLLM2, StructuredConfig(**settings))


def test_fusion_at_unit_level_protects_units_the_task_needs():
    general = torch.tensor([1.0, 1.0, 1.0, 1.0, 4.0])
    task = torch.tensor([1.0, 1.0, 1.0, 4.0, 1.0])
    fused = fuse_units(general, task, TaskAwareConfig(exclusive_fraction=0.4))
    # units 3 and 4 differ most between the sides: each takes its dominant side's (normalised) score
    assert fused[3] == pytest.approx(4 / 1.6) and fused[4] == pytest.approx(4 / 1.6)
    assert torch.allclose(fuse_units(general, task, TaskAwareConfig(ablation="general_only")), (general / general.mean()).double(),
                          atol=0, rtol=1e-12)
    plain = fuse_units(general, task, TaskAwareConfig(ablation="no_partition", alpha=0.5))
    assert plain[3] == pytest.approx(plain[4]) and plain[3] < fused[3]


def test_a_structured_run_gives_a_smaller_checkpoint_plain_transformers_and_mlflow_load(tokenizer_dir, tmp_path,
                                                                                      monkeypatch):
    """Four layers, Qwen2 (biases on q/k/v): one layer, one head group and MLP channels removed by skip scores,
    then distilled full fine-tuning; the pruned and the recovered model keep the smaller config, load in a Python
    process that never imports TaskPrune, and the registered version loads with mlflow.transformers."""
    import transformers as tf

    sys.path.insert(0, str(Path(__file__).parent))
    import behaviour
    from taskprune import config
    from taskprune.data import builtin
    from taskprune.paths import Project
    from taskprune.stages import run_stage

    model_dir = tmp_path / "model"
    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(tf.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True, vocab_size=len(tokenizer), bos_token_id=0,
        eos_token_id=0, pad_token_id=0)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(ex.to_row()) + "\n" for ex in builtin.sentiment(0)[:60]))
    settings = {"prune.method": "structured", "prune.structured.reduction": 0.5, "prune.structured.depth": 0.3,
                "prune.structured.keep_heads": 2, "recover.enabled": True, "recover.steps": 3,
                "recover.batch_size": 4, "recover.train": "full", "recover.loss": "distill",
                "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    behaviour.run_config(tmp_path, "run", settings, model_dir, task, write_general_text(tmp_path / "general.txt"))
    project = Project(tmp_path / "run")
    structure = json.loads((project.masks / "structure.json").read_text())
    assert len(structure["removed_layers"]) == 1 and structure["layer_score"] == "skip"
    assert len(structure["layer_scores"]["task"]) == 4
    pruned = json.loads((project.pruned_model / "config.json").read_text())
    assert (pruned["num_hidden_layers"], pruned["num_attention_heads"], pruned["num_key_value_heads"]) == (3, 2, 1)
    assert pruned["intermediate_size"] < 128
    recovered = json.loads((project.recovered_model / "config.json").read_text())
    assert recovered == pruned
    metrics = json.loads(project.metrics.read_text())
    assert metrics["pruned"]["bytes_on_disk"] < 0.8 * metrics["dense"]["bytes_on_disk"]
    removed = 1 - metrics["pruned"]["decoder_linear_params"] / metrics["dense"]["decoder_linear_params"]
    assert removed == pytest.approx(structure["counts"]["reduction"], abs=1e-6)
    assert metrics["recovery"]["train"] == "full" and metrics["recovery"]["loss"] == "distill"
    stage = json.loads((project.pruned_model / "stage.json").read_text())
    assert stage["removed_layers"] == structure["removed_layers"] and stage["format"] == "checkpoint"
    assert sum(stage["removed_by_unit"].values()) == pytest.approx(1, abs=1e-3)

    run_stage("register", config.load(project.params_file), project)
    registered = json.loads(project.registration.read_text())
    check = (
        "import sys, torch, mlflow\n"
        "from transformers import AutoModelForCausalLM\n"
        f"for path in {[str(project.pruned_model), str(project.recovered_model)]!r}:\n"
        "    model = AutoModelForCausalLM.from_pretrained(path)\n"
        "    assert model.config.num_hidden_layers == 3, model.config\n"
        "    model(torch.tensor([[1, 2, 3]]))\n"
        f"mlflow.set_tracking_uri({settings['tracking.uri']!r})\n"
        f"parts = mlflow.transformers.load_model('models:/{registered['registered_model']}/{registered['version']}',"
        " return_type='components')\n"
        "assert parts['model'].config.num_hidden_layers == 3\n"
        "assert not [m for m in sys.modules if m.startswith(('taskprune', 'flows', 'prefect_tasks'))]\n"
        "print('loaded')\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]

    # the drift from dense is measured per dense layer; the removed layer's state is the one before it
    drift = json.loads(project.eval_file("pruned").read_text())["drift"]
    assert [row["layer"] for row in drift["layers"]] == [0, 1, 2, 3]
    assert all(row["task"] > 0 and row["general"] > 0 for row in drift["layers"])

    # target mode scores one method at several levels with one Artifacts: the importance is computed once
    from taskprune.artifacts import Artifacts
    from taskprune.methods import get_method
    from taskprune.target import at_level

    params = config.load(project.params_file)
    method, inputs, calls = get_method("structured"), Artifacts(project), []
    layer_importance = method.layer_importance
    monkeypatch.setattr(method, "layer_importance", lambda *args: calls.append(1) or layer_importance(*args))
    model, tokenizer_, arch = load_local(project.dense_model)
    kept = [method.score(at_level(params, "structured", level), model, tokenizer_, arch, inputs).structure
            for level in (0.5, 0.6)]
    assert len(calls) == 1 and kept[0]["layer_scores"] == kept[1]["layer_scores"]

    # keep_heads auto: each option is scored on the model as its smaller model computes (refitted, zeroed,
    # layers skipped: the same logits as the surgery's), the weights are the file's again afterwards, and the
    # option with more right calibration answers is kept (all heads on a tie)
    from taskprune.evaluation import accuracy
    from taskprune.models.architectures.base import Keep, Units

    keep = Keep(layers=structure["layers"], channels={int(k): v for k, v in structure["channels"].items()},
                groups={int(k): v for k, v in structure["groups"].items()})
    ids = torch.randint(1, 200, (2, 16))
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad(), method.as_removed(params.prune, model, arch, keep, Units(**structure["units"]), inputs):
        in_place = model(ids).logits
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(load_local(project.pruned_model)[0](ids).logits, in_place, rtol=0, atol=1e-5)
    auto = at_level(config.load(project.params_file, ["prune.structured.keep_heads=auto"]), "structured", 0.5)
    for scores, heads in (((0.5, 0.75), 2), ((0.75, 0.5), 4), ((0.5, 0.5), 4)):
        given = iter(scores)
        monkeypatch.setattr(accuracy, "run_lm_eval", lambda *args: {"task_accuracy": next(given)})
        chosen = method.score(auto, model, tokenizer_, arch, inputs).structure
        assert chosen["calibration_accuracy_by_heads"] == dict(zip(("4", "2"), scores))
        assert chosen["counts"]["groups_kept"] * 2 == heads and chosen["layers"] == structure["layers"]
    # options are tried from all heads down; one that answers no more rows than the best before it ends the tries
    options = {2: keep, 1: keep, 0: keep}
    for scores, tried in (((0.5, 0.75, 0.8), 3), ((0.5, 0.5), 2), ((0.75, 0.5), 2)):
        given = iter(scores)
        monkeypatch.setattr(accuracy, "run_lm_eval", lambda *args: {"task_accuracy": next(given)})
        assert list(method.heads_accuracy(auto, model, tokenizer_, arch, inputs, Units(**structure["units"]),
                                          options).values()) == list(scores[:tried])
    assert kept[0]["counts"]["reduction"] < kept[1]["counts"]["reduction"]


def test_the_refit_brings_the_kept_columns_closer_to_the_dense_output():
    from taskprune.units.refit import head_columns, refit_columns

    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(16, 16, generator=generator)
    x = torch.randn(400, 16, generator=generator) @ mixing  # correlated inputs: the kept columns can stand in
    weight = torch.randn(8, 16, generator=generator)
    keep = list(range(0, 16, 2))
    dense = x @ weight.T
    sliced = (x[:, keep] @ weight[:, keep].T - dense).norm()
    refitted = (x[:, keep] @ refit_columns(weight, x.T @ x, keep, 1e-6).T - dense).norm()
    assert refitted < 0.7 * sliced
    assert head_columns([1], group_size=2, head_dim=3) == [6, 7, 8, 9, 10, 11]
