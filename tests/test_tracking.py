"""MLflow registration into a temporary SQLite store."""

import json
import os
from pathlib import Path

import pytest

from pipeline_helpers import per_matrix_of
from taskprune.config import Params
from taskprune.tracking import CHALLENGER, register_result


def test_register_creates_run_version_alias_and_tags(tmp_path, tiny_llama_dir, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    side = {"task_accuracy": 0.5, "perplexity": 10.0, "params": 100, "nonzero_params": 50,
            "decoder_linear_params": 80, "bytes_on_disk": 400, "tokens_per_s": 12.0}
    metrics = {"task": "capital", "method": "wanda", "dense": dict(side, chance_accuracy=0.25),
               "pruned": dict(side, sparsity=0.5), "run_seconds": 3.0}
    kwargs = dict(params=params, state_dir=tmp_path, task_label="capital", metrics=metrics,
                  per_matrix=per_matrix_of({"0.mlp.up_proj": 0.45, "1.mlp.up_proj": 0.55}),
                  stage_records={"calibrate": {"stage": "calibrate", "seconds": 1.5}},
                  model_dir=tiny_llama_dir, artifacts=[], lineage_tags={"git_commit": "abc", "dvc.masks_md5": "m5"})
    first = register_result(**kwargs, provenance=("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"))
    second = register_result(**kwargs)
    # mlflow.set_tracking_uri sets the variable: the next project in this process must not inherit this store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    client = MlflowClient(tracking_uri=params.tracking.uri)
    model_files = mlflow.artifacts.download_artifacts("models:/taskprune-capital/1", dst_path=str(tmp_path / "v1"))
    licence = (Path(model_files) / "LICENSE.txt").read_text()  # names the base model, not the project's path
    assert "huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct" in licence and "'apache-2.0'" in licence, licence
    card = (Path(model_files) / "model_card_data.yaml").read_text()  # MLflow's copy of the card's front matter
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card
    assert "Made from [HuggingFaceTB/SmolLM2-135M-Instruct]" in (Path(model_files) / "model_card.md").read_text()
    assert (first["version"], second["version"]) == ("1", "2")
    assert str(client.get_registered_model("taskprune-capital").aliases[CHALLENGER]) == "2"
    version = client.get_model_version("taskprune-capital", "1")
    assert version.tags["git_commit"] == "abc" and version.tags["dvc.masks_md5"] == "m5"
    assert version.tags["method"] == "wanda" and version.tags["task"] == "capital"
    assert version.tags["eval.task_accuracy"] == "0.5000" and version.tags["dense.nonzero_params"] == "50"
    assert not [t for t in version.tags if t.startswith("pruned.")]  # one tag per fact
    run = client.get_run(first["run_id"])
    assert run.data.metrics["pruned.task_accuracy"] == 0.5
    assert run.data.params["prune.sparsity"] == "0.5"
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "plots")}
    assert "plots/sparsity_per_layer.png" in artifacts
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'")
    assert [c.data.metrics["seconds"] for c in children] == [1.5]
    loaded = mlflow.transformers.load_model(f"models:/taskprune-capital@{CHALLENGER}", return_type="components")
    assert "model" in loaded


def test_recovered_model_is_registered_with_its_parent_and_loss_curve(tmp_path, tiny_llama_dir):
    from mlflow import MlflowClient

    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    side = {"task_accuracy": 0.5, "perplexity": 10.0, "params": 100, "nonzero_params": 50,
            "decoder_linear_params": 80, "bytes_on_disk": 400, "tokens_per_s": 12.0}
    metrics = {"task": "capital", "method": "wanda", "dense": dict(side), "pruned": dict(side, sparsity=0.5),
               "recovered": dict(side, task_accuracy=0.6, sparsity=0.5),
               "recovery": {"merge": True, "steps": 3}, "run_seconds": 3.0}
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.2}]
    result = register_result(params=params, state_dir=tmp_path, task_label="capital", metrics=metrics,
                             per_matrix=per_matrix_of({"0.mlp.up_proj": 0.5}), stage_records={}, model_dir=tiny_llama_dir,
                             artifacts=[], lineage_tags={}, recovered_dir=tiny_llama_dir, history=history)
    client = MlflowClient(tracking_uri=params.tracking.uri)
    assert (result["version"], result["recovered_version"]) == ("1", "2")
    recovered = client.get_model_version("taskprune-capital", "2")
    assert recovered.tags["parent_version"] == "1" and recovered.tags["eval.task_accuracy"] == "0.6000"
    assert str(client.get_registered_model("taskprune-capital").aliases[CHALLENGER]) == "2"
    curve = client.get_metric_history(result["run_id"], "recover.loss")
    assert [(m.step, m.value) for m in curve] == [(1, 2.0), (2, 1.5), (3, 1.2)]
    assert "plots/recovery_loss.png" in {a.path for a in client.list_artifacts(result["run_id"], "plots")}


def test_sieve_run_logs_convergence_pareto_front_and_the_factorized_model_as_files(tmp_path, tiny_llama_dir):
    from mlflow import MlflowClient

    from taskprune.lowrank import factorize_model, save_factorized, whitened_factors
    from taskprune.models.loading import load_local

    model, tokenizer, arch = load_local(tiny_llama_dir)
    linears = arch.named_linears(model)
    factors = {k: whitened_factors(arch.weight(m), None) for k, m in linears.items()}
    save_factorized(model, tokenizer, factorize_model(model, arch, factors, {k: 4 for k in linears}),
                    tmp_path / "sieve")
    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                                    "prune": {"method": "sieve", "allocation": "search"}})
    side = {"task_accuracy": 0.5, "perplexity": 10.0, "params": 100, "nonzero_params": 50,
            "decoder_linear_params": 80, "bytes_on_disk": 400, "tokens_per_s": 12.0}
    search = {"enabled": True, "kind": "lowrank", "reduction": 0.4, "fitness": "loglik", "uniform_fitness": -3.0,
              "matrix_reduction": {k: 0.3 + 0.2 * (i % 2) for i, k in enumerate(linears)},
              "history": [{"generation": 1, "best": -2.5, "mean": -3.0}, {"generation": 2, "best": -2.0, "mean": -2.4}],
              "front": [{"cost": 10, "size_fraction": 0.3, "fitness": -4.0},
                        {"cost": 20, "size_fraction": 0.6, "fitness": -2.0}]}
    result = register_result(params=params, state_dir=tmp_path, task_label="capital",
                             metrics={"task": "capital", "method": "sieve", "dense": side, "pruned": side,
                                      "run_seconds": 1.0},
                             per_matrix={"name": "reduction_per_matrix", "title": "parameters removed per matrix",
                                         "quantity": "share removed", "values": search["matrix_reduction"]},
                             stage_records={}, model_dir=tmp_path / "sieve", artifacts=[],
                             lineage_tags={}, search=search)
    client = MlflowClient(tracking_uri=params.tracking.uri)
    curve = client.get_metric_history(result["run_id"], "search.best_fitness")
    assert [(m.step, m.value) for m in curve] == [(1, -2.5), (2, -2.0)]
    plots = {a.path for a in client.list_artifacts(result["run_id"], "plots")}
    assert {"plots/search_convergence.png", "plots/pareto_front.png", "plots/reduction_per_matrix.png"} <= plots
    assert "search/pareto_front.json" in {a.path for a in client.list_artifacts(result["run_id"], "search")}
    files = {a.path for a in client.list_artifacts(result["run_id"], "model")}
    assert "model/lowrank.json" in files  # a factorized model is logged as files (taskprune.load rebuilds it)


def test_the_html_report_is_logged_with_the_run(tmp_path, tiny_llama_dir):
    from mlflow import MlflowClient

    from pipeline_helpers import register_tiny

    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    result = register_tiny(params, tmp_path, tiny_llama_dir, report_html="<html>report</html>")
    client = MlflowClient(tracking_uri=params.tracking.uri)
    assert "report.html" in {a.path for a in client.list_artifacts(result["run_id"])}
    path = client.download_artifacts(result["run_id"], "report.html", str(tmp_path))
    assert open(path).read() == "<html>report</html>"


def test_registering_the_same_result_twice_reuses_the_version(tmp_path, tiny_llama_dir):
    from mlflow import MlflowClient

    from pipeline_helpers import register_tiny

    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    first = register_tiny(params, tmp_path, tiny_llama_dir, result_key="k1")
    again = register_tiny(params, tmp_path, tiny_llama_dir, result_key="k1")
    other = register_tiny(params, tmp_path, tiny_llama_dir, result_key="k2")
    assert (first["version"], again["version"], other["version"]) == ("1", "1", "2")
    assert again["reused"] and again["run_id"] == first["run_id"] and "reused" not in other
    assert len(MlflowClient(tracking_uri=params.tracking.uri).search_model_versions("name='taskprune-capital'")) == 2


def test_runs_have_real_stage_times_the_used_params_and_the_version_is_linked_to_its_logged_model(tmp_path,
                                                                                                  tiny_llama_dir):
    import json

    from mlflow import MlflowClient

    params = Params.model_validate({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    side = {"task_accuracy": 0.7, "perplexity": 10.0, "params": 100, "nonzero_params": 80,
            "decoder_linear_params": 80, "bytes_on_disk": 400_000_000, "tokens_per_s": 12.0}
    metrics = {"task": "capital", "method": "wanda", "dense": dict(side, nonzero_params=100),
               "pruned": dict(side, task_accuracy=0.56, sparsity=0.5), "run_seconds": 90.0}
    records = {"calibrate": {"stage": "calibrate", "seconds": 20.0, "ended": 1_800_000_020.0},
               "search": {"stage": "search", "seconds": 0.01, "ended": 1_800_000_021.0, "enabled": False},
               "evaluate": {"stage": "evaluate", "seconds": 60.0, "ended": 1_800_000_090.0, "device": "cpu"}}
    result = register_result(params=params, state_dir=tmp_path, task_label="capital", metrics=metrics,
                             per_matrix=per_matrix_of({"0.mlp.up_proj": 0.5}), stage_records=records,
                             model_dir=tiny_llama_dir, artifacts=[], lineage_tags={"git_commit": "abc123"})
    client = MlflowClient(tracking_uri=params.tracking.uri)
    parent = client.get_run(result["run_id"])
    assert parent.data.tags["mlflow.source.git.commit"] == "abc123"
    assert parent.data.tags["mlflow.note.content"].startswith("capital: task accuracy 0.70 -> 0.56, 20% fewer")
    assert parent.info.start_time == 1_800_000_000_000  # the first stage's start: the parent spans the pipeline
    assert "prune.sparsity" in parent.data.params
    assert not [k for k in parent.data.params if k.startswith(("prune.sieve", "prune.structured", "search."))]
    children = {c.info.run_name: c for c in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'")}
    assert set(children) == {"calibrate", "evaluate"}  # search was off
    evaluate = children["evaluate"]
    assert (evaluate.info.start_time, evaluate.info.end_time) == (1_800_000_030_000, 1_800_000_090_000)
    assert evaluate.data.metrics["task_accuracy"] == 0.56 and evaluate.data.params["device"] == "cpu"
    version = client.get_model_version("taskprune-capital", result["version"])
    assert version.description == parent.data.tags["mlflow.note.content"] and "\n" not in version.description
    [logged] = client.search_logged_models(experiment_ids=[parent.info.experiment_id])
    assert logged.source_run_id == result["run_id"]
    links = json.loads(logged.tags["mlflow.modelVersions"])  # as mlflow.register_model writes it
    assert [(link["name"], str(link["version"])) for link in links] == [("taskprune-capital", result["version"])]


class Crash(BaseException):
    """A kill at a registration step: not an Exception, so nothing in between catches it."""


def test_registration_killed_at_any_step_is_finished_by_the_next_attempt_reusing_what_exists(tmp_path, tiny_llama_dir,
                                                                                          monkeypatch):
    """Registration of a pruned and a recovered model, stopped right after each of its writes to MLflow (the
    run, each logged model, each version, the logged model's link, the alias), then run again: one pruned and
    one recovered version for the result, the alias on the recovered one, nothing registered twice."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline_helpers import SIDE, register_tiny

    metrics = {"task": "capital", "method": "wanda", "dense": SIDE, "pruned": dict(SIDE, sparsity=0.5),
               "recovered": dict(SIDE, task_accuracy=0.6), "recovery": {"merge": True, "steps": 2}, "run_seconds": 1.0}
    writes = [(MlflowClient, "create_run"), (mlflow.transformers, "log_model"), (MlflowClient, "create_model_version"),
              (MlflowClient, "set_logged_model_tags"), (MlflowClient, "set_registered_model_alias")]
    calls: list[str] = []

    def counting(owner, method: str, crash_after: int | None):
        original = getattr(owner, method)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append(method)
            if crash_after is not None and len(calls) == crash_after:
                raise Crash(method)
            return result
        return wrapped

    def register(store: Path, crash_after: int | None) -> dict:
        params = Params.model_validate({"tracking": {"uri": f"sqlite:///{store / 'mlflow.db'}"}})
        with monkeypatch.context() as patch:
            for owner, method in writes:
                patch.setattr(owner, method, counting(owner, method, crash_after))
            return register_tiny(params, store, tiny_llama_dir, result_key="r1", metrics=metrics,
                                 recovered_dir=tiny_llama_dir)

    register(tmp_path / "straight", None)
    steps = list(calls)  # every write of an uninterrupted registration, in order
    assert steps.count("create_model_version") == 2 and steps[-1] == "set_registered_model_alias"
    for step in range(1, len(steps)):
        store = tmp_path / f"killed-after-{step}"
        store.mkdir()
        calls.clear()
        with pytest.raises(Crash):
            register(store, step)
        result = register(store, None)
        client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        versions = client.search_model_versions("name='taskprune-capital'")
        recovered = [v for v in versions if v.tags.get("recovered") == "true"]
        assert len(versions) == 2 and len(recovered) == 1, (step, steps[step - 1], [v.version for v in versions])
        assert recovered[0].tags["parent_version"] == result["version"] != result["recovered_version"]
        assert str(client.get_registered_model("taskprune-capital").aliases[CHALLENGER]) == result["recovered_version"]
        for version in versions:  # every logged model links its version
            model_id = version.source.split("/", 1)[1]  # models:/<logged model id>
            links = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
            assert {"name": "taskprune-capital", "version": str(version.version)} in links, (step, links)
        runs = client.search_runs([result["experiment_id"]], "attributes.status = 'FINISHED'")
        assert [r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") is None] == [result["run_id"]], step
