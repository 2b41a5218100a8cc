"""fetch_model: materialise ``model.name`` as a safetensors directory (GGUF converted once, cached)."""

from taskprune.config import Params
from taskprune.models import loading
from taskprune.paths import Project, StageTimer, atomic_dir, write_json


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "fetch_model")
    with atomic_dir(project.dense_model) as out:
        source = loading.fetch(params.model.name, params.model.revision, out, project.root, project.state)
        write_json(out / "stage.json", {"model": params.model.name, "source_kind": source.kind})
    timer.done(source_kind=source.kind)
    print(f"model ready in {project.dense_model} ({source.kind})")
