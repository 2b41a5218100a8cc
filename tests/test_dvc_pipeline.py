"""`dvc repro`, `dvc exp run -S` and `dvc exp show` on a tiny model in a temporary git repository."""

import json

import pytest
import torch

from conftest import make_project, write_general_text
from pipeline_helpers import configure_tiny, dvc
from taskprune.data import builtin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory, tokenizer_dir):
    from conftest import make_tiny_model

    root = tmp_path_factory.mktemp("dvcproj")
    model = make_tiny_model("qwen2", tokenizer_dir, root / "model")
    project = make_project(root / "project")
    rows = [ex.to_row() for ex in builtin.sentiment(0)[:80]]
    configure_tiny(project, model, rows, write_general_text(root / "general.txt"))
    return project


def test_repro_skip_and_experiments(tiny_project):
    project = tiny_project
    first = dvc(project, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    metrics = json.loads((project / "metrics.json").read_text())
    for side in ("dense", "pruned"):
        for key in ("task_accuracy", "perplexity", "params", "nonzero_params", "decoder_linear_params",
                    "bytes_on_disk", "tokens_per_s"):
            assert key in metrics[side], (side, key)
    assert metrics["dense"]["chance_accuracy"] == 0.5
    assert metrics["pruned"]["sparsity"] == pytest.approx(0.5)
    assert metrics["pruned"]["nonzero_params"] < metrics["dense"]["nonzero_params"]
    assert metrics["run_seconds"] > 0 and set(metrics["stage_seconds"]) >= {"calibrate", "score", "prune"}
    assert "recovered" not in metrics and "recover" not in metrics["stage_seconds"]  # recovery off by default
    registered = json.loads((project / "artifacts" / "register.json").read_text())
    assert registered["version"] == "1"

    again = dvc(project, "repro")
    assert again.returncode == 0, again.stderr
    for stage in ("fetch_model", "calibrate", "score", "search", "prune", "evaluate_dense", "evaluate", "recover",
                  "evaluate_recovered", "register"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, (stage, again.stdout)
    assert json.loads((project / "artifacts" / "register.json").read_text())["version"] == "1"

    experiment = dvc(project, "exp", "run", "-S", "prune.sparsity=0.6")
    assert experiment.returncode == 0, experiment.stdout + experiment.stderr
    assert "Stage 'calibrate' didn't change, skipping" in experiment.stdout  # only downstream of prune re-runs
    shown = dvc(project, "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"sparsity": 0.6' in shown.stdout.replace(" ", "").replace('"sparsity":0.6', '"sparsity": 0.6')
    assert '"params_removed"' in shown.stdout and '"bytes_ratio"' in shown.stdout  # summary.json: a few numbers
    assert "bytes_on_disk" not in shown.stdout  # metrics.json's whole record stays out of the table
    table = dvc(project, "metrics", "show")
    assert table.returncode == 0 and "summary.json" in table.stdout and "accuracy.dense" in table.stdout, table.stdout
    assert len(table.stdout.splitlines()[0].split()) <= 12  # one readable row, not 35 columns
    plots = dvc(project, "plots", "show", "--json", "artifacts/plots/per_layer.json")
    assert plots.returncode == 0 and '"layer"' in plots.stdout, plots.stdout[-2000:] + plots.stderr[-2000:]
    layers = json.loads((project / "artifacts" / "plots" / "per_layer.json").read_text())["layers"]
    assert all(row["drift_task"] >= 0 and row["drift_general"] >= 0 for row in layers)
    assert layers[-1]["drift_task"] > 0  # 60 % sparsity moves the last layer's output
    drift = dvc(project, "plots", "show", "--json", "layer_drift")
    assert drift.returncode == 0 and '"drift_general"' in drift.stdout, drift.stdout[-2000:] + drift.stderr[-2000:]

    aware = dvc(project, "exp", "run", "-S", "prune.method=task_aware", "-S", "prune.allocation=owl")
    assert aware.returncode == 0, aware.stdout + aware.stderr
    masks = json.loads((project / "artifacts" / "masks" / "masks.json").read_text())
    assert masks["method"] == "task_aware" and masks["allocation"] == "owl"
    assert len(set(masks["layer_target"].values())) == 2 and masks["exclusive"]
    # `dvc exp run` leaves the last experiment's params applied: sparsity is still 0.6 here
    assert json.loads((project / "metrics.json").read_text())["pruned"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    shown = dvc(project, "exp", "show", "--json")
    assert shown.stdout.count('"task_aware"') >= 1

    assert not (project / "artifacts" / "updates" / "weights.safetensors").exists()  # score-only: no updates
    sparse = dvc(project, "exp", "run", "-S", "prune.method=task_aware", "-S", "prune.base=sparsegpt",
                 "-S", "prune.allocation=uniform", "-S", "prune.pattern=2:4", "-S", "prune.sparsity=0.5")
    assert sparse.returncode == 0, sparse.stdout + sparse.stderr
    assert "Stage 'calibrate' didn't change, skipping" in sparse.stdout
    from safetensors.torch import load_file

    from taskprune.models.loading import load_local

    updated = load_file(str(project / "artifacts" / "updates" / "weights.safetensors"))
    model, _, arch = load_local(project / "artifacts" / "model" / "pruned")
    dense, _, _ = load_local(project / "artifacts" / "model" / "dense")
    dense_linears = arch.named_linears(dense)
    for key, module in arch.named_linears(model).items():
        weight = arch.weight(module)
        assert (weight.reshape(weight.shape[0], -1, 4) != 0).sum(dim=2).max() <= 2, key
        assert torch.equal(weight, updated[key]), key  # the pruned model carries SparseGPT's updated weights
        kept = weight != 0
        assert not torch.equal(weight[kept], arch.weight(dense_linears[key])[kept]), key  # OBS-updated
    assert json.loads((project / "metrics.json").read_text())["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)

    recovered = dvc(project, "exp", "run", "-S", "recover.enabled=true", "-S", "recover.steps=4",
                    "-S", "recover.checkpoint_every=2")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    for stage in ("calibrate", "score", "prune", "evaluate"):  # recovery re-runs only what follows it
        assert f"Stage '{stage}' didn't change, skipping" in recovered.stdout, stage
    metrics = json.loads((project / "metrics.json").read_text())
    assert set(metrics["recovered"]) >= set(metrics["pruned"]) and metrics["recovery"]["steps"] == 4
    assert metrics["recovered"]["sparsity"] == pytest.approx(metrics["pruned"]["sparsity"], abs=1e-6)
    registered = json.loads((project / "artifacts" / "register.json").read_text())
    assert int(registered["recovered_version"]) == int(registered["version"]) + 1

    sieve = dvc(project, "exp", "run", "-S", "prune.method=sieve", "-S", "prune.pattern=unstructured",
                "-S", "prune.allocation=search", "-S", "search.generations=2", "-S", "search.population=4",
                "-S", "search.examples=8", "-S", "recover.enabled=false")
    assert sieve.returncode == 0, sieve.stdout + sieve.stderr
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["method"] == "sieve" and metrics["search"]["kind"] == "lowrank"
    assert metrics["search"]["generations"] == 2
    assert metrics["pruned"]["decoder_linear_params"] <= 0.61 * metrics["dense"]["decoder_linear_params"]
    assert metrics["pruned"]["bytes_on_disk"] < metrics["dense"]["bytes_on_disk"]
    assert (project / "artifacts" / "model" / "pruned" / "lowrank.json").is_file()
    assert int(json.loads((project / "artifacts" / "register.json").read_text())["version"]) > \
        int(registered["recovered_version"])
