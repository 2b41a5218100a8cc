"""The results table printed at the end of a run (rich, which typer already brings)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = [
    ("task accuracy", "task_accuracy", "{:.4f}"),
    ("task accuracy, prior-corrected", "task_accuracy_prior_corrected", "{:.4f}"),
    ("perplexity (general text)", "perplexity", "{:.2f}"),
    ("parameters", "params", "{:,}"),
    ("non-zero parameters", "nonzero_params", "{:,}"),
    ("decoder-linear parameters", "decoder_linear_params", "{:,}"),
    ("bytes on disk", "bytes_on_disk", "{:,}"),
    ("decode tokens/s", "tokens_per_s", "{:.1f}"),
]


def results_table(metrics: dict) -> Table:
    dense, pruned = metrics["dense"], metrics["pruned"]
    sides = [("dense", dense), ("pruned", pruned)]
    if "recovered" in metrics:
        sides.append(("pruned + LoRA", metrics["recovered"]))
    search = metrics.get("search", {})
    size = (f"decoder-linear parameters -{search['reduction']:.1%}" if search.get("kind") == "lowrank"
            else f"sparsity {pruned.get('sparsity', 0):.3f}")
    table = Table(title=f"TaskPrune: task {metrics['task']}, method {metrics['method']}, "
                        f"{size} (chance accuracy {dense['chance_accuracy']:.3f})")
    table.add_column("metric")
    for name, _ in sides:
        table.add_column(name, justify="right")

    def cell(side: dict, key: str, fmt: str) -> str:
        value = side.get(key)
        return "n/a" if value is None else fmt.format(value)

    for label, key, fmt in ROWS:
        table.add_row(label, *(cell(side, key, fmt) for _, side in sides))
    seconds = metrics.get("stage_seconds", {})
    table.caption = ("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
                     + f"; total {metrics.get('run_seconds', 0):.0f} s")
    if search.get("generations"):
        table.caption += (f"\nsearch ({search['kind']}, {search['objective']}): {search['generations']} generations, "
                          f"fitness uniform {search['uniform_fitness']:.4f} -> best {search['best_fitness']:.4f}")
    if "recovery" in metrics:
        rec = metrics["recovery"]
        table.caption += (f"\nLoRA recovery: {rec['steps']} steps, loss {rec['first_loss']:.3f} -> "
                          f"{rec['final_loss']:.3f}, {rec['minutes']:.1f} min, "
                          f"{'merged, mask re-applied' if rec['merge'] else 'adapter kept apart'}")
    return table


def print_results(metrics: dict) -> None:
    Console().print(results_table(metrics))
