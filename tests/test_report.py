"""The HTML report: one self-contained page with the results table, the run's plots and the Pareto table."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from pipeline_helpers import per_matrix_of
from taskprune.report import html_report

SIDE = {"task_accuracy": 0.5, "perplexity": 10.0, "params": 100, "nonzero_params": 50, "decoder_linear_params": 80,
        "bytes_on_disk": 400, "tokens_per_s": 12.0, "chance_accuracy": 0.25}


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self.headings, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in = tag

    def handle_data(self, data):
        if self._in in ("td", "th") and data.strip():
            self.cells.append(data.strip())
        if self._in in ("h1", "h2") and data.strip():
            self.headings.append(data.strip())


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def decoded_sizes(page: Page) -> list[tuple[int, int]]:
    sizes = []
    for image in page.images:
        head, _, data = image["src"].partition(",")
        assert head == "data:image/png;base64"
        sizes.append(Image.open(io.BytesIO(base64.b64decode(data))).size)
    return sizes


def test_sparsity_run_report_has_table_heatmap_loss_curve_and_stage_times():
    metrics = {"task": "capital", "method": "task_aware+wanda", "dense": SIDE, "pruned": {**SIDE, "sparsity": 0.5},
               "recovered": {**SIDE, "task_accuracy": 0.6}, "run_seconds": 9.0,
               "stage_seconds": {"calibrate": 2.0, "score": 1.0},
               "recovery": {"steps": 2, "first_loss": 3.0, "final_loss": 2.0, "minutes": 0.1, "merge": True}}
    per_matrix = per_matrix_of({f"{i}.mlp.up_proj": 0.5 for i in range(3)})
    html = html_report(metrics, per_matrix, "wanda-<run>", history=[{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}],
                       exclusive={f"{i}.mlp.up_proj": {"task": 0.1, "general": 0.05} for i in range(3)})
    page = parse(html)
    assert "wanda-&lt;run&gt;" in html  # names are escaped
    assert ["dense", "pruned", "pruned + LoRA"] == page.cells[1:4]
    assert "0.6000" in page.cells and "calibrate" in page.cells
    assert {"Recovery: loss", "Task- and general-exclusive input channels"} <= set(page.headings)
    assert "Sparsity per layer" not in page.headings  # 0.5 everywhere: a flat block says nothing, the table does
    assert len(page.images) == 2 and all(w > 300 and h > 150 for w, h in decoded_sizes(page))
    owl = parse(html_report(metrics, per_matrix_of({"0.mlp.up_proj": 0.45, "1.mlp.up_proj": 0.55}), "owl-run"))
    assert "Sparsity per layer" in owl.headings
    assert "LoRA recovery: 2 steps" in html
    # what does differ per layer in a uniform run: how far each layer's output is from dense
    drift = {which: {"texts": {"task": 8, "general": 8}, "max_tokens": 128,
                     "layers": [{"layer": i, "task": 0.1 * (i + 1) * scale, "general": 0.05 * (i + 1) * scale}
                                for i in range(3)]} for which, scale in (("pruned", 1.0), ("recovered", 0.5))}
    drifted = parse(html_report(metrics, per_matrix, "wanda-run", drift=drift))
    assert "Drift from the dense model, layer by layer" in drifted.headings and len(drifted.images) == 1


def test_sieve_report_has_rank_map_convergence_and_pareto_table():
    search = {"enabled": True, "kind": "lowrank", "reduction": 0.4, "fitness": "loglik", "uniform_fitness": -3.0,
              "objective": "pareto", "generations": 2, "best_fitness": -2.0,
              "matrix_reduction": {f"{i}.self_attn.q_proj": 0.3 + 0.2 * i for i in range(2)},
              "history": [{"generation": 1, "best": -2.5, "mean": -3.0}, {"generation": 2, "best": -2.0, "mean": -2.4}],
              "front": [{"cost": 10, "size_fraction": 0.3, "fitness": -4.0},
                        {"cost": 20, "size_fraction": 0.6, "fitness": -2.0}]}
    metrics = {"task": "capital", "method": "sieve", "dense": SIDE, "pruned": SIDE, "run_seconds": 1.0, "search": search}
    per_matrix = {"name": "reduction_per_matrix", "title": "parameters removed per matrix",
                  "quantity": "share of the matrix's parameters removed", "values": search["matrix_reduction"]}
    page = parse(html_report(metrics, per_matrix, "sieve-run", search=search,
                             registration={"registered_model": "m", "version": "3", "run_id": "abc"}))
    assert {"Parameters removed per matrix", "Genetic search: convergence", "Genetic search: Pareto front",
            "Pareto front (table)"} <= set(page.headings)
    assert len(decoded_sizes(page)) == 3
    assert {"size_fraction", "0.3", "-4.0"} <= set(page.cells)


FRONTIER = {
    "dense": {"validation_accuracy": 0.8, "bytes_on_disk": 400, "decoder_linear_params": 80},
    "budget": {"max_accuracy_drop": 0.05, "min_validation_accuracy": 0.76, "max_bytes_fraction": None,
               "min_decode_speedup": None},
    "objective": "parameters", "validation_examples": 50,
    "points": [{"method": "structured", "level": 0.1, "validation_accuracy": 0.78, "reduction": 0.1,
                "bytes_on_disk": 380, "bytes_fraction": 0.95, "speedup": 1.05, "within": True, "reasons": [],
                "recovered": False, "seconds": 3.0},
               {"method": "structured", "level": 0.2, "validation_accuracy": 0.7, "reduction": 0.2,
                "bytes_on_disk": 360, "bytes_fraction": 0.9, "speedup": 1.1, "within": False,
                "reasons": ["validation accuracy 0.700 < 0.760 allowed"], "recovered": False, "seconds": 3.0},
               {"method": "sieve", "level": 0.1, "validation_accuracy": 0.6, "reduction": 0.1, "bytes_on_disk": 380,
                "bytes_fraction": 0.95, "speedup": None, "within": False,
                "reasons": ["validation accuracy 0.600 < 0.760 allowed"], "recovered": False, "seconds": 3.0}],
    "choice": {"method": "structured", "level": 0.1, "within_budget": True, "level_key": "prune.structured.reduction",
               "validation_accuracy": 0.78, "reduction": 0.1, "bytes_fraction": 0.95, "speedup": 1.05}}


def target_metrics() -> dict:
    target = {**FRONTIER["budget"], "objective": "parameters", "dense_validation_accuracy": 0.8,
              "validation_examples": 50, "points": 3, "choice": FRONTIER["choice"]}
    return {"task": "capital", "method": "structured", "dense": {**SIDE, "bytes_on_disk": 538_000_000},
            "pruned": {**SIDE, "task_accuracy": 0.48, "bytes_on_disk": 511_000_000}, "run_seconds": 1.0,
            "target": target}


def test_a_target_run_report_leads_with_the_answer_and_shows_the_frontier():
    per_matrix = {"name": "reduction_per_matrix", "title": "parameters removed per matrix",
                  "quantity": "share of the matrix's parameters removed", "values": {"0.mlp.down_proj": 0.1, "0.self_attn.o_proj": 0.0}}
    html = html_report(target_metrics(), per_matrix, "structured-run", frontier=FRONTIER)
    page = parse(html)
    answer = ("smallest model within 5% of dense accuracy (structured): 10% fewer decoder-linear parameters, 1.05x "
              "decode, 511 MB on disk (dense 538 MB); test accuracy 0.480 vs dense 0.500")
    assert answer in html
    assert {"Accuracy budget: validation accuracy per level tried", "Accuracy budget: every point tried"} <= set(
        page.headings)
    assert "no: validation accuracy 0.600 < 0.760 allowed" in page.cells and "n/a" in page.cells
    # one layer, so nothing varies between layers: the frontier only, no per-matrix map
    assert len(decoded_sizes(page)) == 1 and "Parameters removed per matrix" not in page.headings
    layered = {"0.mlp.down_proj": 0.1, "0.self_attn.o_proj": 0.0, "1.mlp.down_proj": 1.0, "1.self_attn.o_proj": 1.0}
    removed_layer = parse(html_report(target_metrics(), {**per_matrix, "values": layered}, "structured-run",
                                      frontier=FRONTIER))
    assert "Parameters removed per matrix" in removed_layer.headings  # a removed layer differs from the others


def test_the_report_renders_in_a_real_browser(tmp_path):
    """Headless Chromium opens the report and paints it (skipped where no Chromium is installed)."""
    import shutil
    import subprocess

    import pytest

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt install chromium)")
    per_matrix = per_matrix_of({f"{i}.mlp.up_proj": 0.1 * i for i in range(4)})
    page = tmp_path / "report.html"
    page.write_text(html_report(target_metrics(), per_matrix, "structured-run", frontier=FRONTIER))
    shot = tmp_path / "shot.png"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                           "--virtual-time-budget=5000", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram)  # not a blank page: text, table rules and figures were painted


def test_decode_speed_is_the_side_by_side_timing_with_its_range_and_says_when_it_is_noise():
    from taskprune.report import table_rows

    side = {"task_accuracy": 0.5, "tokens_per_s": 99.0, "bytes_on_disk": 4e8}

    def metrics(decode):
        return {"task": "capital", "method": "structured", "dense": dict(side, tokens_per_s=10.0),
                "pruned": dict(side, decode=decode, tokens_per_s=decode["tokens_per_s"][1])}

    faster = {"rounds": 5, "tokens_per_s": [14.0, 15.0, 15.5], "dense_tokens_per_s": [11.5, 12.0, 12.4],
              "speedup": 1.25, "within_noise": False}
    columns, rows = table_rows(metrics(faster))
    decode = next(row for row in rows if row[0] == "decode tokens/s")
    # dense as timed next to the pruned model (not its own stage's 10.0), each with its range; the paired ratio
    assert decode == ["decode tokens/s", "12.0 (11.5-12.4)", "15.0 (14.0-15.5)", "1.25x"]
    same = dict(faster, tokens_per_s=[11.6, 12.3, 13.0], speedup=1.025, within_noise=True)
    decode = next(row for row in table_rows(metrics(same))[1] if row[0] == "decode tokens/s")
    assert decode[-1] == "no change (within noise)"
