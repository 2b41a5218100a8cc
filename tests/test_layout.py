"""The shape of the code: import graph (no cycle, no stage importing a stage, the library never importing
the orchestration), __init__ files that only re-export, no method named outside its module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from taskprune.codeversion import CodeGraph

REPO = Path(__file__).resolve().parents[1]
GRAPH = CodeGraph(REPO / "taskprune")
MODULES = GRAPH.modules()


def edges(runtime: bool) -> dict[str, list[str]]:
    """Module -> modules it imports (``runtime``: also imports inside functions; parent packages left out)."""
    return {m: [t for t in GRAPH.imports(m, f, runtime=runtime) if not m.startswith(t + ".") and t != "taskprune"]
            for m, f in MODULES.items()}


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_no_import_cycle_at_import_time_nor_at_run_time():
    assert find_cycle(edges(runtime=False)) is None
    assert find_cycle(edges(runtime=True)) is None


def test_no_stage_imports_another_stage_and_only_the_dispatcher_runs_them():
    stage_modules = {m for m in MODULES if m.startswith("taskprune.stages.") and m != "taskprune.stages.dispatch"}
    assert len(stage_modules) >= 10
    for module, targets in edges(runtime=True).items():
        imported = set(targets) & stage_modules
        assert not imported, f"{module} imports {sorted(imported)}"


def test_the_library_never_imports_the_orchestration():
    for module, file in MODULES.items():
        tree = ast.parse(file.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
                [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [n for n in names if n.split(".")[0] in ("prefect", "flows", "prefect_tasks", "prefect_ray")]
        assert not bad, f"{module} imports {bad}"


def test_init_files_only_re_export():
    for file in (REPO / "taskprune").rglob("__init__.py"):
        for node in ast.parse(file.read_text()).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            exports = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]
            assert docstring or exports or isinstance(node, (ast.Import, ast.ImportFrom)), \
                f"{file.relative_to(REPO)}:{node.lineno}: code in an __init__.py"


def test_no_method_is_named_outside_its_module():
    """Stages, tracking, evaluation and loading ask the registered method; they never compare its name."""
    names = "magnitude|wanda|sparsegpt|task_aware|sieve|lowrank"
    test = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']|["']({names})["']\s*(==|!=)|is_factorized|\.sequential\b""")
    for file in (REPO / "taskprune").rglob("*.py"):
        if "methods" in file.relative_to(REPO).parts:
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            assert not test.search(line), f"{file.relative_to(REPO)}:{number}: {line.strip()}"


def test_no_two_modules_share_a_file_name_across_packages():
    """fitness.py, cli.py, adapters ... once had twins; names say what a module is."""
    seen: dict[str, Path] = {}
    allowed = {"__init__.py", "base.py", "registry.py"}  # the plug-in pattern: base class and registry per family
    for root in ("taskprune", "flows", "prefect_tasks"):
        for file in (REPO / root).rglob("*.py"):
            # a method's (a stage's) module is named after it, like the scoring functions (the flow) it calls
            if file.name in allowed or file.parent.name in ("methods", "stages"):
                continue
            assert file.name not in seen, f"{file.relative_to(REPO)} and {seen[file.name].relative_to(REPO)}"
            seen[file.name] = file
