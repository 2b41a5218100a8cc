"""The results table printed at the end of a run (rich, which typer already brings)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from taskprune.pipeline import order

ROWS = [
    ("task accuracy", "task_accuracy", "{:.4f}"),
    ("task accuracy, prior-corrected", "task_accuracy_prior_corrected", "{:.4f}"),
    ("perplexity (general text)", "perplexity", "{:.2f}"),
    ("parameters", "params", "{:,}"),
    ("non-zero parameters", "nonzero_params", "{:,}"),
    ("decoder-linear parameters", "decoder_linear_params", "{:,}"),
    # the rest is mostly the embedding: 50 % sparsity of the decoder linears is far less of the whole model
    ("decoder-linear share", "decoder_linear_share", "{:.1%}"),
    ("size on disk (MB)", "megabytes", "{:,.1f}"),
    ("decode tokens/s", "tokens_per_s", "{:.1f}"),
]
# how the change column reads: accuracy in points and relative, the rest relative (decode as a ratio)
CHANGE = {"task_accuracy": "points", "task_accuracy_prior_corrected": "points", "tokens_per_s": "ratio",
          "decoder_linear_share": None}


def value_of(side: dict, key: str):
    """A metric of one model, or one derived from its metrics (the decoder linears' share of the parameters)."""
    if key == "megabytes":
        return side["bytes_on_disk"] / 1e6 if side.get("bytes_on_disk") is not None else None
    if key == "decoder_linear_share":
        return side["decoder_linear_params"] / side["params"] if side.get("params") and \
            side.get("decoder_linear_params") is not None else None
    return side.get(key)


def cell(side: dict, key: str, fmt: str) -> str:
    """One table cell, in the terminal and in the HTML report alike (decode speed with its range when it was timed
    in rounds)."""
    value = value_of(side, key)
    if value is None:
        return "n/a"
    if key == "tokens_per_s" and side.get("decode_range"):
        low, high = side["decode_range"]
        return f"{fmt.format(value)} ({fmt.format(low)}-{fmt.format(high)})"
    return fmt.format(value)


def with_paired_decode(sides: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Decode speed as timed side by side: each compressed model's rounds and, for dense, the rounds timed next to
    the last model (its own stage ran minutes apart, under whatever else loaded the machine then)."""
    last = sides[-1][1].get("decode")
    out = []
    for name, side in sides:
        decode = last if name == "dense" else side.get("decode")
        if decode:
            key = "dense_tokens_per_s" if name == "dense" else "tokens_per_s"
            low, median, high = decode[key]
            side = {**side, "tokens_per_s": median, "decode_range": [low, high]}
        out.append((name, side))
    return out


def recovery_name(recovery: dict) -> str:
    """How the model was recovered, in a few words: "LoRA", "full fine-tuning", "... distilled"."""
    name = "LoRA" if recovery.get("train", "lora") == "lora" else "full fine-tuning"
    return name + (", distilled" if recovery.get("loss") == "distill" else "")


def recovery_result(recovery: dict, metrics: dict) -> str:
    """What happened to the trained weights: merged (the mask re-applied where there is one) or kept apart."""
    if not recovery["merge"]:
        return "adapter kept apart"
    merged = "all weights trained" if recovery.get("train") == "full" else "merged"
    return merged + (", mask re-applied" if metrics["pruned"].get("sparsity") else "")


def target_answer(metrics: dict) -> str | None:
    """Target mode's answer in one line, the first thing the table shows (None in fixed-level mode)."""
    target = metrics.get("target")
    if not target:
        return None
    chosen, budget = target["choice"], f"{target['max_accuracy_drop']:.0%}"
    final = metrics.get("recovered", metrics["pruned"])
    dense = metrics["dense"]
    if not chosen["within_budget"]:
        bound = chosen.get("accuracy_bound")
        sure = f", at least {bound:.3f} at {target.get('confidence', 0.95):.0%} confidence" if bound is not None else ""
        return (f"no model within {budget} of dense accuracy among {target['points']} points tried: the closest, "
                f"{chosen['method']} with {chosen['reduction']:.1%} fewer decoder-linear parameters, reached "
                f"validation accuracy {chosen['validation_accuracy']:.3f}{sure} ({target['min_validation_accuracy']:.3f} "
                "needed); built and evaluated, not registered")
    speed = f", {chosen['speedup']:.2f}x decode" if chosen.get("speedup") else ""
    return (f"smallest model within {budget} of dense accuracy ({chosen['method']}): {chosen['reduction']:.0%} fewer "
            f"decoder-linear parameters{speed}, {final['bytes_on_disk'] / 1e6:.0f} MB on disk (dense "
            f"{dense['bytes_on_disk'] / 1e6:.0f} MB); test accuracy {final['task_accuracy']:.3f} vs dense "
            f"{dense['task_accuracy']:.3f}")


def model_sides(metrics: dict) -> list[tuple[str, dict]]:
    """The table's columns: the dense, the pruned and (when recovery ran) the recovered model."""
    sides = [("dense", metrics["dense"]), ("pruned", metrics["pruned"])]
    if "recovered" in metrics:
        sides.append((f"pruned + {recovery_name(metrics.get('recovery', {})).split(',')[0]}", metrics["recovered"]))
    return sides


def change(dense: dict, model: dict, key: str) -> str:
    """The last model against dense, in words a reader compares: points for accuracy, a ratio for decode speed."""
    before, after, how = value_of(dense, key), value_of(model, key), CHANGE.get(key, "relative")
    if before is None or after is None or how is None:
        return ""
    if how == "ratio":
        decode = model.get("decode")
        if key == "tokens_per_s" and decode:  # timed side by side: the ratio of the medians, or no change at all
            return "no change (within noise)" if decode["within_noise"] else f"{decode['speedup']:.2f}x"
        return f"{after / before:.2f}x" if before else ""
    relative = f"{(after - before) / before:+.1%}" if before else ""
    if how == "points":
        return f"{(after - before) * 100:+.1f} pts ({relative})" if relative else f"{(after - before) * 100:+.1f} pts"
    return "no change" if after == before else relative


def table_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of the results table (terminal, markdown and HTML alike): rows that are n/a for
    every model are left out; the last column is the change of the last model against dense."""
    sides = with_paired_decode(model_sides(metrics))
    dense = sides[0][1]
    columns = ["metric", *(name for name, _ in sides), f"{sides[-1][0]} vs dense"]
    rows = []
    for label, key, fmt in ROWS:
        cells = [cell(side, key, fmt) for _, side in sides]
        if all(c == "n/a" for c in cells):
            continue
        if key == "task_accuracy" and dense.get("chance_accuracy") is not None:
            label = f"task accuracy (chance {dense['chance_accuracy']:.3f})"
        rows.append([label, *cells, change(dense, sides[-1][1], key)])
    return columns, rows


def results_table(metrics: dict, compression: str = "") -> Table:
    """``compression``: how the method describes its result in a line (the pruned model's stage.json)."""
    search = metrics.get("search", {})
    table = Table(title=f"TaskPrune: {metrics['task']}, {metrics['method']}, {compression}")
    columns, rows = table_rows(metrics)
    table.add_column(columns[0])
    for name in columns[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    seconds = metrics.get("stage_seconds", {})
    table.caption = ("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(seconds.items(),
                                                                                   key=lambda kv: order(kv[0])))
                     + f"; total {metrics.get('run_seconds', 0):.0f} s")
    if search.get("generations"):
        table.caption += (f"\nsearch ({search['kind']}, {search['objective']}): {search['generations']} generations, "
                          f"fitness uniform {search['uniform_fitness']:.4f} -> best {search['best_fitness']:.4f}")
    for what, how in metrics.get("removed", {}).items():
        table.caption += f"\n{what}: {how}"
    if "recovery" in metrics:
        rec = metrics["recovery"]
        table.caption += (f"\n{recovery_name(rec)} recovery: {rec['steps']} steps, loss {rec['first_loss']:.3f} -> "
                          f"{rec['final_loss']:.3f}, {rec['minutes']:.1f} min, {recovery_result(rec, metrics)}")
    return table


def results_markdown(metrics: dict, compression: str = "", registration: dict | None = None) -> str:
    """The results table as markdown (the Prefect flow run's artifact), with where the result is registered."""
    columns, rows = table_rows(metrics)
    answer = target_answer(metrics)
    lines = [f"# {metrics['task']}: {metrics['method']}, {compression}", "", *([f"**{answer}**", ""] if answer else []),
             "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *(f"- {line}" for line in (results_table(metrics, compression).caption or "").splitlines() if line)]
    if registration and registration["version"] is None:
        lines += [f"- MLflow: run `{registration['run_id']}` at {registration['tracking_uri']}; not registered: "
                  f"{registration['not_registered']}"]
    elif registration:
        version = registration.get("recovered_version", registration["version"])
        lines += [f"- MLflow: run `{registration['run_id']}` (experiment {registration['experiment_id']}) at "
                  f"{registration['tracking_uri']}; model `{registration['registered_model']}` version {version}"]
    return "\n".join(lines) + "\n"


def print_results(metrics: dict, compression: str = "") -> None:
    console = Console()
    answer = target_answer(metrics)
    if answer:
        console.print(answer, style="bold", highlight=False)
    console.print(results_table(metrics, compression))


# -- the HTML report (taskprune report; also logged to MLflow by the register stage) -------------------
HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TaskPrune: {{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; } .meta { color: #666; font-size: .9em; }
</style></head><body>
<h1>TaskPrune: {{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
{% if answer %}<p><strong>{{ answer }}</strong></p>{% endif %}
<h2>Results</h2>
<table><tr><th>metric</th>{% for name in sides %}<th>{{ name }}</th>{% endfor %}</tr>
{% for label, cells in rows %}<tr><td>{{ label }}</td>{% for c in cells %}<td class="num">{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% if notes %}<ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% for caption, png in figures %}<h2>{{ caption }}</h2><img alt="{{ caption }}" src="data:image/png;base64,{{ png }}">
{% endfor %}
{% if points %}<h2>Accuracy budget: every point tried</h2>
<table><tr><th>method</th><th>level</th><th>validation accuracy</th><th>parameters removed</th><th>bytes x dense</th>
<th>decode x dense</th><th>within the budget</th></tr>
{% for p in points %}<tr><td>{{ p.method }}</td><td class="num">{{ p.level }}</td>
<td class="num">{{ "%.3f"|format(p.validation_accuracy) }}</td><td class="num">{{ "%.1f%%"|format(100 * p.reduction) }}</td>
<td class="num">{{ "%.3f"|format(p.bytes_fraction) }}</td>
<td class="num">{{ "%.2f"|format(p.speedup) if p.speedup is not none else "n/a" }}</td>
<td>{{ "yes" if p.within else "no: " ~ p.reasons|join("; ") }}</td></tr>{% endfor %}</table>{% endif %}
{% if front %}<h2>Pareto front (table)</h2>
<table><tr>{% for k in front[0] %}<th>{{ k }}</th>{% endfor %}</tr>
{% for p in front %}<tr>{% for k in front[0] %}<td class="num">{{ p[k] }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
<h2>Stage times</h2>
<table><tr><th>stage</th><th>seconds</th></tr>
{% for stage, seconds in stages %}<tr><td>{{ stage }}</td><td class="num">{{ "%.1f"|format(seconds) }}</td></tr>{% endfor %}
</table>
</body></html>
"""

CAPTIONS = {"sparsity_per_layer": "Sparsity per layer", "reduction_per_matrix": "Parameters removed per matrix",
            "exclusive_channels": "Task- and general-exclusive input channels",
            "search_convergence": "Genetic search: convergence", "pareto_front": "Genetic search: Pareto front",
            "recovery_loss": "Recovery: loss", "frontier": "Accuracy budget: validation accuracy per level tried",
            "layer_drift": "Drift from the dense model, layer by layer"}


def _png(figure) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def html_report(metrics: dict, per_matrix: dict, run_name: str, *, compression: str = "", search: dict | None = None,
                exclusive: dict | None = None, history: list[dict] | None = None,
                registration: dict | None = None, figures: dict | None = None, frontier: dict | None = None,
                drift: dict | None = None) -> str:
    """One self-contained HTML page (figures inlined as PNG) for a run; ``figures`` (``run_figures`` of
    the same run) when the caller has made them already."""
    import datetime as dt

    from jinja2 import Environment

    from taskprune.tracking.plots import run_figures

    columns, table = table_rows(metrics)
    rows = [(row[0], row[1:]) for row in table]
    caption = results_table(metrics, compression).caption or ""
    notes = [line for line in caption.splitlines()[1:] if line]  # search and recovery lines
    answer = target_answer(metrics)
    subtitle = f"method {metrics['method']}, task {metrics['task']}; report written " \
               f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    if registration and registration["version"] is not None:
        subtitle += (f"; registered as {registration['registered_model']} version "
                     f"{registration.get('recovered_version', registration['version'])}, MLflow run {registration['run_id']}")
    if figures is None:
        figures = run_figures(run_name, per_matrix, search, exclusive, history, frontier, drift)
    figures = [(CAPTIONS.get(path.split("/")[-1][:-4], path), _png(fig)) for path, fig in figures.items()]
    return Environment(autoescape=True).from_string(HTML).render(
        title=run_name, subtitle=subtitle, answer=answer, points=(frontier or {}).get("points"), sides=columns[1:],
        rows=rows, notes=notes, figures=figures,
        front=(search or {}).get("front"),
        stages=sorted(metrics.get("stage_seconds", {}).items(), key=lambda item: (order(item[0]), item[0])))
