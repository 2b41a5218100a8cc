"""The genetic search over per-matrix levels: budget repair, resume, Pareto front, fitness workers, stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from taskprune.config import Params
from taskprune.errors import TaskPruneError
from taskprune.paths import Project, read_json
from taskprune.search import level_swap, lowrank_space, repair, run_search, sparsity_space

SHAPES = {f"{layer}.{name}": shape for layer in range(4)
          for name, shape in (("q", (64, 64)), ("up", (128, 64)), ("down", (64, 128)))}


def toy_fitness(space, weights):
    """Compressing a 'down' matrix hurts three times as much as the others: a GA should find that."""
    penalty = np.array([weights if key.endswith("down") else 1.0 for key in space.keys])

    def evaluate(genomes, progress=None):
        if progress is not None:
            progress.update(len(genomes))
        return -(np.asarray(genomes) * penalty).sum(axis=1) / 10
    return evaluate


@pytest.mark.parametrize("seed", range(5))
def test_repair_keeps_every_genome_within_budget_and_fills_it(seed):
    space, _ = lowrank_space(SHAPES, 10, 0.4)
    rng = np.random.default_rng(seed)
    for _ in range(50):
        genome = repair(space, rng.integers(0, space.levels, len(SHAPES)), rng)
        assert space.cost(genome) <= space.budget
        for i in np.flatnonzero(genome > 0):  # no single matrix could be made denser within the budget
            denser = genome.copy()
            denser[i] -= 1
            assert space.cost(denser) > space.budget


def test_level_swap_moves_one_level_each_way():
    space, _ = sparsity_space(SHAPES, 0.5, 9, 0.05)
    genome = level_swap(space, space.uniform, np.random.default_rng(0), swaps=1)
    assert sorted(genome - space.uniform) == [-1] + [0] * (len(SHAPES) - 2) + [1]
    assert space.cost(space.uniform) == space.budget == sum(o * (i - i // 2) for o, i in SHAPES.values())


def test_budget_search_beats_uniform_within_budget():
    space, _ = lowrank_space(SHAPES, 10, 0.4)
    result = run_search(space, toy_fitness(space, 3.0), population=12, generations=12, seed=0)
    assert space.cost(result.best) <= space.budget
    assert result.best_fitness > result.uniform_fitness + 1.0
    assert [h["generation"] for h in result.history] == list(range(1, 13))
    assert all(b >= a for a, b in zip([h["best"] for h in result.history], [h["best"] for h in result.history][1:]))
    down = [i for i, key in enumerate(space.keys) if key.endswith("down")]
    assert result.best[down].mean() < result.best.mean()  # the expensive matrices are compressed less


def test_killed_search_resumes_from_its_checkpoint_with_the_same_result(tmp_path):
    space, _ = lowrank_space(SHAPES, 10, 0.4)
    evaluate = toy_fitness(space, 3.0)
    straight = run_search(space, evaluate, population=8, generations=5, seed=3)
    run_search(space, evaluate, population=8, generations=5, seed=3, checkpoint_dir=tmp_path, stop_after=2)
    assert (tmp_path / "generation.pkl").is_file()
    resumed = run_search(space, evaluate, population=8, generations=5, seed=3, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 2
    assert resumed.history == straight.history
    assert np.array_equal(resumed.best, straight.best)


def test_pareto_front_is_sorted_and_non_dominated():
    space, _ = lowrank_space(SHAPES, 10, 0.4)
    result = run_search(space, toy_fitness(space, 3.0), objective="pareto", population=12, generations=6, seed=0)
    front = result.front
    assert len(front) >= 3
    assert [p["cost"] for p in front] == sorted(p["cost"] for p in front)
    for a in front:
        assert not any(b["cost"] <= a["cost"] and b["fitness"] > a["fitness"] for b in front if b is not a)
    assert front[-1]["cost"] == space.dense_cost  # the dense model is on the front (seeded)


def test_sparsity_levels_of_the_worker_match_the_mask_rule():
    from taskprune.masks import unstructured_mask
    from taskprune.search.levels import row_ranks

    scores = torch.rand(16, 40, generator=torch.Generator().manual_seed(0))
    ranks = row_ranks(scores)
    for sparsity in (0.0, 0.3, 0.55, 0.9):
        assert torch.equal(ranks >= int(40 * sparsity), unstructured_mask(scores, sparsity))


@pytest.mark.parametrize("override, message", [
    ({"prune": {"method": "sieve", "pattern": "2:4", "sparsity": 0.5}}, "sieve"),
    ({"prune": {"method": "sieve", "allocation": "owl"}}, "sieve"),
    ({"prune": {"method": "sparsegpt", "allocation": "search"}}, "needs a method with per-matrix levels"),
    ({"prune": {"allocation": "search", "pattern": "2:4", "sparsity": 0.5}}, "unstructured"),
    ({"search": {"max_accuracy_drop": 0.05}}, "pareto"),
    ({"search": {"target_reduction": 1.2}}, "less than 1"),
    ({"search": {"generations": 0}}, "greater than or equal to 1"),
])
def test_conflicting_search_settings_are_errors(override, message):
    from taskprune.config import validate

    with pytest.raises(TaskPruneError, match=message):
        validate(override, "params.yaml")


# -- the stage on a tiny model ------------------------------------------------------------------------
def tiny_project(tmp_path, model_dir, **sections) -> tuple[Project, Params]:
    import shutil

    from taskprune.data import builtin
    from tests.conftest import write_general_text

    project = Project(tmp_path)
    shutil.copytree(model_dir, project.dense_model)
    rows = [ex.to_row() for ex in builtin.capital(0)][:60]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"task": {"path": "task.jsonl"},
           "calibration": {"general": {"source": "file", "path": str(write_general_text(tmp_path / "g.txt"))},
                           "num_samples": 4, "seq_len": 32},
           "search": {"population": 6, "generations": 2, "examples": 12},
           "evaluate": {"perplexity_docs": 4, "decode_tokens": 2, "limit": 8}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return project, Params.model_validate(raw)


def run_stages(params, project, *names):
    from taskprune.stages import run_stage

    for name in names:
        run_stage(name, params, project)


def test_sieve_search_end_to_end_on_a_tiny_model(tiny_llama_dir, tmp_path):
    project, params = tiny_project(tmp_path, tiny_llama_dir, prune={"method": "sieve", "allocation": "search"},
                                   recover={"enabled": True, "steps": 2})
    run_stages(params, project, "prepare_data", "calibrate", "score", "search", "prune")
    allocation = read_json(project.search / "allocation.json")
    assert allocation["kind"] == "lowrank" and len(allocation["history"]) == 2
    assert allocation["cost"] <= allocation["budget"] and allocation["reduction"] == pytest.approx(0.4, abs=0.01)
    assert allocation["best_fitness"] >= allocation["uniform_fitness"]
    assert (project.moments / "task" / "layer-0000.safetensors").is_file() and (project.updates / "factors.safetensors").is_file()
    assert not (project.state / "checkpoints").exists() or not any((project.state / "checkpoints").iterdir())
    run_stages(params, project, "evaluate_dense", "evaluate")
    dense, pruned = read_json(project.eval_dir / "dense.json"), read_json(project.eval_dir / "pruned.json")
    assert pruned["decoder_linear_params"] == allocation["cost"]
    assert pruned["decoder_linear_params"] <= 0.61 * dense["decoder_linear_params"]
    assert pruned["bytes_on_disk"] < dense["bytes_on_disk"] and pruned["tokens_per_s"] > 0
    run_stages(params, project, "recover")  # LoRA on the factors keeps their ranks
    run_stages(params, project, "evaluate_recovered")
    metrics = read_json(project.metrics)
    assert metrics["recovered"]["decoder_linear_params"] == pruned["decoder_linear_params"]
    assert metrics["search"]["kind"] == "lowrank" and metrics["search"]["generations"] == 2


def test_pareto_search_picks_by_accuracy_drop(tiny_llama_dir, tmp_path):
    project, params = tiny_project(tmp_path, tiny_llama_dir, prune={"method": "sieve", "allocation": "search"},
                                   search={"objective": "pareto", "max_accuracy_drop": 0.5})
    run_stages(params, project, "prepare_data", "calibrate", "score", "search")
    allocation = read_json(project.search / "allocation.json")
    front = allocation["front"]
    assert front and all("calibration_accuracy" in p for p in front)
    dense = allocation["choice"]["dense_calibration_accuracy"]
    ok = [p for p in front if p["calibration_accuracy"] >= dense - 0.5]
    assert allocation["cost"] == ok[0]["cost"]  # the smallest model within the allowed drop


def test_sparsity_search_writes_per_matrix_masks_within_budget(tiny_llama_dir, tmp_path):
    from taskprune import masks as masklib

    project, params = tiny_project(tmp_path, tiny_llama_dir, prune={"method": "wanda", "allocation": "search"},
                                   search={"fitness": "kl"})
    run_stages(params, project, "prepare_data", "calibrate", "score", "search", "prune")
    assert project.mask_dir == project.search
    info = read_json(project.search / "masks.json")
    assert info["allocation"] == "search" and info["sparsity"] >= 0.5 - 1e-6
    masks = masklib.load_masks(project.search / "masks.safetensors")
    allocation = read_json(project.search / "allocation.json")
    for key, mask in masks.items():
        assert masklib.sparsity(mask) == pytest.approx(int(mask.shape[1] * allocation["values"][key]) / mask.shape[1])
    per_matrix = list(info["per_layer"].values())  # the prune stage reports the plain mean over matrices
    assert read_json(project.pruned_model / "stage.json")["achieved_sparsity"] == pytest.approx(
        sum(per_matrix) / len(per_matrix), abs=1e-5)


def test_search_is_off_unless_asked(tiny_llama_dir, tmp_path):
    project, params = tiny_project(tmp_path, tiny_llama_dir)
    run_stages(params, project, "search")
    assert read_json(project.search / "stage.json") == {"enabled": False}
    assert project.mask_dir == project.masks


@pytest.mark.slow
def test_process_workers_compute_the_serial_fitness(tiny_llama_dir, tmp_path):
    from taskprune.search.fitness import ProcessEvaluator, SerialEvaluator
    from taskprune.search.fitness import worker_spec

    project, params = tiny_project(tmp_path, tiny_llama_dir, prune={"method": "sieve", "allocation": "search"})
    run_stages(params, project, "prepare_data", "calibrate", "score")
    from taskprune.models.loading import load_local

    model, _, arch = load_local(project.dense_model)
    shapes = {k: tuple(arch.weight(m).shape) for k, m in arch.named_linears(model).items()}
    space, values = params.prune.method_object.level_space(params, shapes)
    spec = worker_spec(params, project, values)
    genomes = np.stack([space.uniform, np.zeros_like(space.uniform), np.full_like(space.uniform, 5)])
    serial = SerialEvaluator(spec)(genomes)
    assert np.ptp(serial) > 1e-4  # the levels change the fitness
    pool = ProcessEvaluator(spec, workers=2)
    try:
        assert np.allclose(pool(genomes), serial, atol=1e-4)
    finally:
        pool.close()


def test_a_ray_cluster_refusing_a_client_server_is_connected_again_and_other_errors_are_not(monkeypatch, capsys):
    """flows/ray_search.connect: the proxy's "Starting Ray client server failed" (seen on a loaded head node) is
    tried again, said on stderr, up to CONNECT_ATTEMPTS; anything else fails at once. (Ray's init is replaced
    here: the refusal cannot be caused on purpose; the cluster test below connects for real.)"""
    import ray

    from flows import ray_search

    refused = ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray client server "
                                     "failed. See ray_client_server_23000.err for detailed logs.")
    calls = []

    def init(address, **kwargs):
        calls.append((address, kwargs))
        if len(calls) <= failures:
            raise error

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray_search, "CONNECT_PAUSE", 0.0)
    address = "ray://head:10001"
    failures, error = 2, refused
    ray_search.connect(address)
    assert calls == [(address, ray_search.RAY_INIT)] * 3
    said = capsys.readouterr().err
    assert said.count("retrying: the Ray cluster at ray://head:10001 could not start a client server") == 2
    assert "(attempt 2 of 3)" in said
    calls.clear()
    failures = 3
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        ray_search.connect(address)
    assert len(calls) == 3
    calls.clear()
    error = ConnectionError("ray client connection timeout")
    with pytest.raises(ConnectionError, match="timeout"):
        ray_search.connect(address)
    assert len(calls) == 1


def test_ray_address_needs_the_orchestrated_command(tiny_llama_dir, tmp_path):
    project, params = tiny_project(tmp_path, tiny_llama_dir, prune={"method": "sieve", "allocation": "search"},
                                   search={"ray_address": "local"})
    run_stages(params, project, "prepare_data", "calibrate", "score")
    with pytest.raises(TaskPruneError, match="Prefect's Ray task runner"):
        run_stages(params, project, "search")


@pytest.mark.slow
def test_search_on_a_ray_cluster_with_a_worker_killed_mid_search_matches_the_local_search(tiny_llama_dir, tmp_path):
    """search.ray_address at a Ray cluster of separate processes, started as infra/docker-compose.yml starts
    it (`ray start --head`, and its worker replicas with `ray start --address`): every fitness is a Prefect
    task on Prefect's Ray task runner. One worker node is killed (its raylet and worker processes, SIGKILL)
    once the first generation is saved, while the search runs: it goes on on the other nodes (Ray retries a task
    whose node died) and ends where the local one does."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from ruamel.yaml import YAML

    from infra import Infra, service
    from pipeline_helpers import cli_env

    sections = dict(prune={"method": "sieve", "allocation": "search"},
                    search={"population": 8, "generations": 4, "examples": 24})
    local, params = tiny_project(tmp_path / "local", tiny_llama_dir, **sections)
    run_stages(params, local, "prepare_data", "calibrate", "score")
    started = time.perf_counter()
    run_stages(params, local, "search")
    local_seconds = time.perf_counter() - started
    expected = read_json(local.search / "allocation.json")

    cluster = Infra(tmp_path / "infra")
    try:
        started = time.perf_counter()
        head = cluster.start_ray_head()
        replicas = service("ray-worker")["deploy"]["replicas"]
        workers = [cluster.start_ray_worker(i, head) for i in range(replicas)]
        startup = time.perf_counter() - started
        address = f"ray://127.0.0.1:{cluster.local.ports[10001]}"  # the compose file's ray-client-server-port
        on_ray, params = tiny_project(tmp_path / "ray", tiny_llama_dir, **{**sections, "search": {
            **sections["search"], "ray_address": address}})
        run_stages(params, on_ray, "prepare_data", "calibrate", "score")
        YAML().dump(params.model_dump(mode="json"), on_ray.params_file)
        environment = {**cli_env(on_ray.root),  # the cluster's token, as the compose file's worker has it
                       **{k: v for k, v in cluster.client_environment().items() if k.startswith("RAY_AUTH")}}
        started = time.perf_counter()
        search = subprocess.Popen([str(Path(sys.executable).parent / "taskprune"), "stage", "search"], cwd=on_ray.root,
                                  env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        checkpoints = on_ray.state / "checkpoints"
        while not any(checkpoints.glob("search-*/generation.pkl")):  # the first generation is done
            assert search.poll() is None, search.stdout.read()[-3000:]
            time.sleep(0.05)
        os.killpg(workers[0].pid, signal.SIGKILL)  # the node: `ray start --block`, its raylet and its workers
        killed_during = search.poll() is None
        out = search.communicate(timeout=900)[0]
        cluster_seconds = time.perf_counter() - started
        (tmp_path / "search.log").write_text(out)
        assert search.returncode == 0, out[-4000:]
        assert killed_during, "the search ended before the worker was killed"
    finally:
        cluster.close()
    got = read_json(on_ray.search / "allocation.json")
    assert got["levels"] == expected["levels"] and got["cost"] == expected["cost"]
    assert [h["best"] for h in got["history"]] == pytest.approx([h["best"] for h in expected["history"]], abs=1e-3)
    print(f"ray cluster: head + {replicas} workers up in {startup:.1f} s; search {local_seconds:.1f} s in-process, "
          f"{cluster_seconds:.1f} s as `taskprune stage search` on the cluster (a worker killed); log {tmp_path}")
