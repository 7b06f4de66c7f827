"""No import cycles among the modules of fr/ and evaluation/, read from the source (lazy imports included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from tests.helpers import ROOT

PACKAGES = ("fr", "evaluation")

Graph = Dict[str, Set[str]]


def module_files(root: str, packages: Tuple[str, ...]) -> Dict[str, str]:
    """Dotted module name -> path of its .py file (a package's is its __init__.py)."""
    found = {}
    for package in packages:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = [d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py"))]
            prefix = os.path.relpath(folder, root).replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    found[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = os.path.join(folder, name)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes) -> Iterator[ast.AST]:
    """Every import statement at any depth (function bodies too: they run when called), except under
    `if TYPE_CHECKING:`, which never runs."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse)
        else:
            yield from _imports(ast.iter_child_nodes(node))


def _targets(statement: ast.AST, module: str, is_package: bool, modules: Dict[str, str]) -> Iterator[str]:
    """The dotted names an import statement loads: `from a import b` loads a.b when that is a module."""
    if isinstance(statement, ast.Import):
        yield from (alias.name for alias in statement.names)
        return
    base = statement.module or ""
    if statement.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (statement.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    for alias in statement.names:
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph(root: str, packages: Tuple[str, ...]) -> Graph:
    """module -> the modules its imports execute, including the packages around them (`import a.b.c` runs
    a/__init__.py and a/b/__init__.py first) unless the importer lives inside that package already."""
    modules = module_files(root, packages)
    graph: Graph = {name: set() for name in modules}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
        is_package = path.endswith("__init__.py")
        for statement in _imports(tree.body):
            for target in _targets(statement, module, is_package, modules):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    inside = module == name or module.startswith(name + ".")
                    if name in modules and not inside:
                        graph[module].add(name)
    return graph


def cycles(graph: Graph) -> List[Tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, in sorted order."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


@pytest.fixture(scope="module")
def project_cycles() -> List[Tuple[str, ...]]:
    return cycles(import_graph(ROOT, PACKAGES))


def _write(root, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_graph_sees_lazy_relative_and_package_imports_but_not_type_checking_ones(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            # a lazy import inside a function is an edge
            "pkg/a.py": "def f():\n    from pkg import b\n",
            "pkg/b.py": "import pkg.a\n",
            # imports only a type checker runs are not
            "pkg/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
                "else:\n    import pkg.sub.e\n"
            ),
            "pkg/d.py": "from pkg.c import x\n",
            # importing pkg.sub.e runs pkg/sub/__init__.py, which imports f back
            "pkg/sub/__init__.py": "from pkg import f\n",
            "pkg/sub/e.py": "",
            "pkg/f.py": "from pkg.sub.e import g\n",
            # relative imports resolve against the importer
            "pkg/g.py": "from . import h\n",
            "pkg/h.py": "from .g import x\nfrom .sub import e\n",
            "other/__init__.py": "import pkg.a\n",
        },
    )
    graph = import_graph(str(tmp_path), ("pkg", "other"))
    assert graph["pkg.c"] == {"pkg.sub", "pkg.sub.e"} and graph["pkg.d"] == {"pkg.c"}
    assert graph["pkg.h"] == {"pkg.g", "pkg.sub", "pkg.sub.e"}
    assert graph["other"] == {"pkg", "pkg.a"}
    assert cycles(graph) == [("pkg.a", "pkg.b"), ("pkg.f", "pkg.sub"), ("pkg.g", "pkg.h")]


def test_no_cycles(project_cycles):
    assert not project_cycles, f"import cycles: {project_cycles}"


def test_config_validation_imports_registries_without_a_cycle():
    graph = import_graph(ROOT, PACKAGES)
    # The registries' modules are edges of fr.config (lazy imports count), yet none of them leads back to it.
    assert {"fr.train.optim", "fr.data.loader", "fr.data.augment", "fr.heads.margins"} <= graph["fr.config"]
    assert not any("fr.config" in cycle for cycle in cycles(graph))


def test_importing_the_config_loads_no_training_code():
    code = "import sys, fr.config; print(*sorted(m for m in sys.modules if m.startswith('fr.')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = loaded.stdout.split()
    assert "fr.config" in modules
    assert not [m for m in modules if m.startswith(("fr.data", "fr.heads", "fr.models", "fr.train"))]


def test_evaluation_is_the_bottom_layer():
    """fr imports evaluation (errors, atomic writes, the input normalisation); evaluation never imports fr."""
    graph = import_graph(ROOT, PACKAGES)
    upward = {
        module: sorted(t for t in targets if t.split(".")[0] == "fr")
        for module, targets in graph.items()
        if module.split(".")[0] == "evaluation"
    }
    assert not {module: targets for module, targets in upward.items() if targets}
    assert {"evaluation.fileio", "evaluation.preprocess"} <= graph["fr.data.dali"] | graph["fr.data.writer"]
