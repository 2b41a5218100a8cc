"""Shared fixtures: a byte-level BPE tokenizer trained in-process and tiny random models of five
architectures, saved as safetensors directories (no hub, no network)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest


def share_cores() -> None:
    """Under pytest-xdist (``-n auto``) each worker and the subprocesses it starts get their share of the cores:
    torch's default of one thread per core in every worker would oversubscribe the machine several times over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(max(1, (os.cpu_count() or 1) // workers)))


share_cores()  # before anything imports torch

from taskprune import env  # noqa: E402
from taskprune.scaffold import PROJECT_FILES  # noqa: E402

env.apply()

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2", "opt", "gemma3")
BOS_ARCHITECTURES = ("gemma3",)  # their tokenizer starts every text with BOS, as Gemma's does


def corpus() -> list[str]:
    from taskprune.data import builtin

    texts = [ex.calibration_text() for ex in builtin.capital(0) + builtin.sentiment(0)]
    return texts + ["The history of the old city begins with a small village by the river."] * 20


def train_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer trained in-process on the built-in tasks' text, saved at ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tiny_config(arch: str, vocab: int):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch in ("llama", "qwen2", "mistral"):
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
        return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **common)
    if arch == "gemma3":  # sliding-window and full attention layers, each with its own rotary table and mask
        return tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=512,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                   tie_word_embeddings=True, **common)
    if arch == "qwen2-sliding":  # Qwen2 with sliding-window layers after the first
        return tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=512, use_sliding_window=True,
                              sliding_window=8, max_window_layers=1, tie_word_embeddings=True, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    if arch == "opt":
        return tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            word_embed_proj_dim=64, max_position_embeddings=512, **common)
    raise ValueError(arch)


def make_tiny_model(arch: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if arch in BOS_ARCHITECTURES:
        from tokenizers import processors

        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny_model_dir(request, tokenizer_dir, tmp_path_factory) -> Path:
    return make_tiny_model(request.param, tokenizer_dir, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return make_tiny_model("llama", tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


def make_project(root: Path, model_dir: Path | None = None, *, git: bool = True) -> Path:
    """A fresh TaskPrune project (params.yaml, dvc.yaml, DVC initialised) at ``root``."""
    from taskprune.scaffold import init_project

    if git:
        return init_project(root, template=REPO)
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    return root


def write_general_text(path: Path, paragraphs: int = 200) -> Path:
    """Offline general text for tests (source=file)."""
    import random

    rng = random.Random(0)
    words = "the a city river old new people time year work house light small great long world".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(30)).capitalize() + "." for _ in range(paragraphs))
    path.write_text(text, encoding="utf-8")
    return path


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker more than cores (at most 8). A quarter of the suite's time is spent waiting on
    servers, subprocesses and polls; the extra worker fills it."""
    return min((os.cpu_count() or 1) + 1, 8)


FIRST = ("test_end_to_end.py",)  # the longest test: started at once, beside everything else


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order pytest-xdist's work stealing (``-n auto``) spreads best: the longest test first, then the
    quick tests, then the other slow ones. The worker that gets the first half starts the longest test; the
    other runs its quick tests and then the slow ones, which the first steals from the end of its queue once
    it is done, so neither worker idles while slow tests wait behind each other."""
    def rank(item: pytest.Item) -> int:
        if item.path.name in FIRST:
            return 0
        return 2 if item.get_closest_marker("slow") else 1
    items.sort(key=rank)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Prefect stops its temporary API server at interpreter exit, after pytest has closed
    the captured streams; its "Stopping temporary server" log line would print a
    "--- Logging error ---" traceback. Drop such handler errors once the session is over."""
    logging.raiseExceptions = False
