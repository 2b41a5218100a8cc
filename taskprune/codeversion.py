"""The code a stage runs, as a content hash: part of what DVC compares before skipping a stage.

A stage's code is the closure of its module's imports inside ``taskprune`` (read from the source
with ``ast``; imports under ``if TYPE_CHECKING:`` do not run and do not count), plus, for the stages
that call the method (``Stage.method_code`` in the pipeline table), the method's module and its
closure, or only the statistics its plan asks for (calibrate, which just collects them).
The method registry imports method modules by name, so a stage's own closure never pulls in every
method: editing Wanda's scoring re-runs score onwards of a Wanda run, not calibration.

For a checkout this is the code's content hash; an installed release hashes its installed files.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path

PACKAGE = "taskprune"


class _Imports(ast.NodeVisitor):
    """Module names an AST imports (absolute names; relative imports resolved against ``module``)."""

    def __init__(self, module: str, is_package: bool, nested: bool = True):
        self.module, self.is_package, self.nested, self.found = module, is_package, nested, []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if self.nested:  # an import inside a function runs when it is called
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, None) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".")
            parts = parts if self.is_package else parts[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        self.found += [(base, alias.name) for alias in node.names]


class CodeGraph:
    """Imports between TaskPrune's modules, read from the source tree at ``package_dir``."""

    def __init__(self, package_dir: Path | None = None):
        if package_dir is None:
            import taskprune

            package_dir = Path(taskprune.__file__).resolve().parent
        self.package_dir = package_dir
        self._edges: dict[tuple, list[str]] = {}

    def file_of(self, module: str) -> Path | None:
        if module != PACKAGE and not module.startswith(PACKAGE + "."):
            return None
        path = self.package_dir.joinpath(*module.split(".")[1:])
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def imports(self, module: str, file: Path, *, runtime: bool = True) -> list[str]:
        """The TaskPrune modules that importing ``module`` (at ``file``) and calling its functions runs.

        ``runtime=False``: only the modules its import statements name at module level (the edges an
        import cycle would follow), without the parent packages an import also runs."""
        key = (module, runtime)
        if key not in self._edges:
            visitor = _Imports(module, file.name == "__init__.py", nested=runtime)
            visitor.visit(ast.parse(file.read_text(encoding="utf-8"), str(file)))
            names = []
            for base, name in visitor.found:
                for candidate in ([f"{base}.{name}"] if name else []) + [base]:
                    if self.file_of(candidate):
                        names += _with_parents(candidate) if runtime else [candidate]
                        break
            self._edges[key] = sorted(set(names) - {module})
        return self._edges[key]

    def modules(self) -> dict[str, Path]:
        """Every module of the package: name -> file."""
        found = {}
        for file in sorted(self.package_dir.rglob("*.py")):
            parts = [PACKAGE, *file.relative_to(self.package_dir).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
        return found

    def closure(self, roots: dict[str, Path]) -> dict[str, Path]:
        """Module name -> file of ``roots`` and every TaskPrune module they import, directly or not."""
        seen: dict[str, Path] = {}
        todo = list(roots.items())
        while todo:
            module, file = todo.pop()
            if module in seen:
                continue
            seen[module] = file
            todo += [(name, self.file_of(name)) for name in self.imports(module, file) if name not in seen]
        return seen

    def module_roots(self, *modules: str) -> dict[str, Path]:
        """Files of ``modules``: TaskPrune's from this source tree, a plug-in's where Python finds it."""
        roots = {}
        for module in modules:
            file = self.file_of(module)
            if file is None:
                spec = importlib.util.find_spec(module)
                file = Path(spec.origin) if spec and spec.origin else None
            if file is None:
                raise ValueError(f"cannot find the source of module {module}")
            roots.update({name: self.file_of(name) for name in _with_parents(module) if self.file_of(name)})
            roots[module] = file
        return roots


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def digest(files: dict[str, Path], extra: str = "") -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    h.update(extra.encode())
    return h.hexdigest()[:20]


def stage_code(stage, method, cfg, graph: CodeGraph | None = None, statistics: tuple[str, ...] | None = None,
               also: tuple = ()) -> dict:
    """What ``stage`` (a pipeline ``Stage``) runs for ``method`` configured by ``cfg`` (``prune.*``): the hash
    and the modules it covers. Target mode: ``also`` the other methods the run may choose, and ``statistics``
    all of them need."""
    graph = graph or CodeGraph()
    roots = [stage.function.partition(":")[0]]
    extra = ""
    if stage.method_code == "module":
        roots += [type(m).__module__ for m in (method, *also)]
    elif stage.method_code == "statistics":
        extra = json.dumps({"statistics": list(statistics or method.plan(cfg).statistics)}, sort_keys=True)
    files = graph.closure(graph.module_roots(*roots))
    return {"stage": stage.name, "code": digest(files, extra), "modules": sorted(files),
            **(json.loads(extra) if extra else {})}


def code_version(records: list[dict]) -> str:
    """One hash for a whole result: every stage's code hash."""
    return hashlib.sha256("".join(r["stage"] + r["code"] for r in records).encode()).hexdigest()[:20]
