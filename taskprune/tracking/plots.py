"""The figures of a run, made once and used twice: logged to MLflow (tracking) and embedded in the HTML
report (taskprune.report). Matplotlib with the Agg backend; every function returns a figure."""

from __future__ import annotations

from taskprune.config import Params


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_name_of(params: Params, task_label: str) -> str:
    """The MLflow run's name, what differs most between runs first, method and its level, then the task, e.g.
    ``structured-0.0125-capital``, ``wanda-0.5-capital`` (in target mode the chosen point; the budget is in the run's
    description and params): the runs list's column shows about 21 characters, and the task is also in its
    Datasets column. The rest of the settings are in tags."""
    prune = params.prune
    level = params
    for part in prune.method_object.level_key.split("."):
        level = getattr(level, part)
    return f"{prune.label}-{level:g}-{task_label}"


def sparsity_figure(per_layer: dict[str, float], title: str, label: str = "sparsity (fraction of weights zeroed)"):
    """Heatmap of a value per matrix (achieved sparsity, share of parameters removed): decoder layer (x) by
    linear module (y)."""
    plt = _pyplot()
    import numpy as np

    layers = sorted({int(key.split(".", 1)[0]) for key in per_layer})
    modules = list(dict.fromkeys(key.split(".", 1)[1] for key in per_layer))  # model order
    grid = np.full((len(modules), len(layers)), np.nan)
    for key, value in per_layer.items():
        layer, module = key.split(".", 1)
        grid[modules.index(module), layers.index(int(layer))] = value
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(layers) + 3), 0.45 * len(modules) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
    ax.set_yticks(range(len(modules)), modules, fontsize=8)
    ax.set_xlabel("decoder layer")
    fig.colorbar(image, ax=ax, label=label)
    mean = float(np.nanmean(grid))
    ax.set_title(f"{title}\nmean {mean:.3f}, min {np.nanmin(grid):.3f}, max {np.nanmax(grid):.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def exclusive_figure(exclusive: dict[str, dict[str, float]], title: str):
    """Share of input channels exclusive to the task and to general text, per decoder layer."""
    plt = _pyplot()

    layers = sorted({int(k.split(".", 1)[0]) for k in exclusive})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for side, colour in (("task", "#d1495b"), ("general", "#3b75af")):
        means = [sum(v[side] for k, v in exclusive.items() if int(k.split(".", 1)[0]) == layer)
                 / sum(1 for k in exclusive if int(k.split(".", 1)[0]) == layer) for layer in layers]
        ax.plot(layers, means, marker="o", ms=3, color=colour, label=f"{side}-exclusive")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of input channels")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend: bool = True):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_figure(history: list[dict], title: str):
    """Recovery: training loss per step."""
    fig, ax = _pyplot().subplots(figsize=(7, 3.5))
    steps = [h["step"] for h in history]
    parts = [key for key in ("answer_loss", "distill_loss") if key in history[0]]
    ax.plot(steps, [h["loss"] for h in history], lw=1, label="total" if parts else None)
    for key in parts:  # distillation: the answer loss and the KL to the dense model
        ax.plot(steps, [h[key] for h in history], lw=1, label=key.replace("_", " "))
    return _finish(fig, ax, "step", "training loss", f"{title}: recovery", legend=bool(parts))


def convergence_figure(search: dict, title: str):
    """Genetic search: best and mean fitness per generation, and the uniform allocation's."""
    history = search["history"]
    fig, ax = _pyplot().subplots(figsize=(7, 3.5))
    ax.plot([h["generation"] for h in history], [h["best"] for h in history], marker="o", ms=3, label="best")
    ax.plot([h["generation"] for h in history], [h["mean"] for h in history], lw=1, label="population mean")
    if search.get("uniform_fitness") is not None:
        ax.axhline(search["uniform_fitness"], color="grey", ls="--", lw=1, label="uniform allocation")
    return _finish(fig, ax, "generation", f"fitness ({search.get('fitness', 'loglik')})", f"{title}: genetic search")


def pareto_figure(search: dict, title: str):
    """NSGA-II front: fitness against size, with the chosen operating point."""
    front = search["front"]
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    ax.plot([p["size_fraction"] for p in front], [p["fitness"] for p in front], marker="o")
    chosen = 1 - search["reduction"]
    ax.axvline(chosen, color="red", ls="--", lw=1, label=f"chosen ({chosen:.2f} of dense)")
    return _finish(fig, ax, "size (fraction of the dense decoder linears)", "fitness", f"{title}: Pareto front")


def frontier_figure(frontier: dict, title: str):
    """Target mode: validation accuracy against parameters removed, one curve per method, each point's lower
    confidence bound (what the budget is judged by) as a bar below it, the budget line, the dense model at 0 and
    the chosen point marked."""
    fig, ax = _pyplot().subplots(figsize=(6.5, 4.2))
    dense = frontier["dense"]["validation_accuracy"]
    bound_label = "lower confidence bound (judged against the budget)"
    for method in dict.fromkeys(p["method"] for p in frontier["points"]):
        points = sorted((p for p in frontier["points"] if p["method"] == method), key=lambda p: p["reduction"])
        (line,) = ax.plot([0.0] + [p["reduction"] for p in points],
                          [dense] + [p["validation_accuracy"] for p in points], marker="o", label=method)
        bounded = [p for p in points if p.get("accuracy_bound") is not None]
        if bounded:
            x, low = [p["reduction"] for p in bounded], [p["accuracy_bound"] for p in bounded]
            ax.vlines(x, low, [p["validation_accuracy"] for p in bounded], colors=line.get_color(), linestyles=":",
                      lw=1.2, label=bound_label)
            ax.scatter(x, low, marker="_", s=60, color=line.get_color())
            bound_label = None  # one legend entry for all methods
    floor = frontier["budget"]["min_validation_accuracy"]
    ax.axhline(floor, color="red", ls="--", lw=1,
               label=f"budget: {frontier['budget']['max_accuracy_drop']:.0%} below dense ({floor:.3f})")
    chosen = frontier["choice"]
    ax.scatter([chosen["reduction"]], [chosen["validation_accuracy"]], s=220, marker="*", color="gold",
               edgecolor="black", zorder=5, label=f"chosen: {chosen['method']} at {chosen['level']:g}"
               + ("" if chosen["within_budget"] else " (outside the budget)"))
    return _finish(fig, ax, "share of decoder-linear parameters removed", "validation accuracy",
                   f"{title}: accuracy budget")


def varies_by_layer(values: dict[str, float]) -> bool:
    """Whether a per-matrix quantity differs between layers for some module (``"<layer>.<module>"`` keys): a uniform
    allocation, or a width cut the same in every layer, would draw flat rows that carry nothing."""
    by_module: dict[str, set] = {}
    for key, value in values.items():
        by_module.setdefault(key.split(".", 1)[-1], set()).add(value)
    return any(len(seen) > 1 for seen in by_module.values())


def drift_figure(drift: dict[str, dict], title: str):
    """Relative distance from the dense model's residual stream after each decoder layer: one colour per
    compressed model (pruned, recovered), solid on task prompts, dashed on general text."""
    fig, ax = _pyplot().subplots(figsize=(8, 3.8))
    styles = {"task": "-", "general": "--"}
    for (which, values), colour in zip(drift.items(), ("#d1495b", "#3b75af")):
        layers = [row["layer"] for row in values["layers"]]
        for kind, count in values["texts"].items():
            ax.plot(layers, [row[kind] for row in values["layers"]], styles.get(kind, ":"), marker="o", ms=3,
                    color=colour, label=f"{which}, {kind} text ({count} sequences)")
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, "decoder layer (of the dense model)", "||h - h_dense|| / ||h_dense||",
                   f"{title}: drift from dense after each layer")


def run_figures(run_name: str, per_matrix: dict, search: dict | None = None,
                exclusive: dict | None = None, history: list[dict] | None = None,
                frontier: dict | None = None, drift: dict | None = None) -> dict:
    """Artifact path -> figure, for every plot this run has. ``per_matrix``: what the method reports per
    decoder matrix (``name``, ``title``, ``quantity``, ``values``; the pruned model's stage.json); ``drift``:
    per compressed model, its distance from dense per layer (``taskprune.evaluation.drift``)."""
    figures = {"plots/frontier.png": frontier_figure(frontier, run_name)} if frontier else {}
    if drift:
        figures["plots/layer_drift.png"] = drift_figure(drift, run_name)
    if varies_by_layer(per_matrix["values"]):  # one value per module in every layer: the notes say it, no figure
        figures[f"plots/{per_matrix['name']}.png"] = sparsity_figure(
            per_matrix["values"], f"{run_name}: {per_matrix['title']}", per_matrix["quantity"])
    if exclusive:
        figures["plots/exclusive_channels.png"] = exclusive_figure(exclusive, f"{run_name}: exclusive channels")
    if search and search.get("history"):
        figures["plots/search_convergence.png"] = convergence_figure(search, run_name)
        if search.get("front"):
            figures["plots/pareto_front.png"] = pareto_figure(search, run_name)
    if history:
        figures["plots/recovery_loss.png"] = loss_figure(history, run_name)
    return figures
