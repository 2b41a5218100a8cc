"""prune: apply the masks to the dense model and save it as a normal safetensors directory."""

from __future__ import annotations

from collections import defaultdict

from safetensors.torch import load_file

from taskprune import masks as masklib
from taskprune.config import Params
from taskprune.models.loading import load_local, save_model
from taskprune.pruning import apply_masks, load_updated_weights
from taskprune.paths import Project, StageTimer, atomic_dir, read_json, write_json


def print_sparsity(achieved: dict[str, float]) -> None:
    """Achieved sparsity per decoder layer: the cheap sanity check Wanda always prints."""
    by_layer = defaultdict(list)
    for key, value in achieved.items():
        by_layer[int(key.split(".", 1)[0])].append(value)
    line = "  ".join(f"{i}:{sum(v) / len(v):.3f}" for i, v in sorted(by_layer.items()))
    print(f"sparsity per layer  {line}")


def run_sieve(params: Params, project: Project) -> None:
    """Replace every matrix given a rank by the search with its factors; export the smaller model."""
    from taskprune.lowrank import factorize_model, load_factors, save_factorized

    model, tokenizer, arch = load_local(project.dense_model, "cpu")
    allocation = read_json(project.search / "allocation.json")
    ranks = factorize_model(model, arch, load_factors(project.updates / "factors.safetensors"),
                            allocation["values"])
    with atomic_dir(project.pruned_model) as out:
        save_factorized(model, tokenizer, ranks, out)
        write_json(out / "stage.json", dict(
            method="sieve", stats="task", pattern="lowrank", target_sparsity=0.0, achieved_sparsity=0.0,
            reduction=allocation["reduction"], factorized=len(ranks), base_model=params.model.name))
    print(f"sieve: {len(ranks)} of {len(allocation['values'])} matrices factorized, "
          f"{allocation['reduction']:.1%} of the decoder-linear parameters removed")


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "prune")
    if params.prune.method == "sieve":
        run_sieve(params, project)
        timer.done(method="sieve")
        return
    model, tokenizer, arch = load_local(project.dense_model, "cpu")
    updated = project.updates / "weights.safetensors"
    if updated.exists():  # SparseGPT: the OBS-updated weights replace the dense ones before masking
        load_updated_weights(model, arch, load_file(str(updated)))
    achieved = apply_masks(model, arch, masklib.load_masks(project.mask_dir / "masks.safetensors"))
    print_sparsity(achieved)
    info = read_json(project.mask_dir / "masks.json")
    with atomic_dir(project.pruned_model) as out:
        save_model(model, tokenizer, out)
        # The checkpoint explains itself: how it was made, next to the weights.
        write_json(out / "stage.json", dict(
            method=info["method"], stats=info["stats"], pattern=info["pattern"],
            target_sparsity=info["target_sparsity"],
            achieved_sparsity=round(sum(achieved.values()) / len(achieved), 6), base_model=params.model.name))
    timer.done()
