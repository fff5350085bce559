"""The shape of the package, held by tests: no import cycles, a map that matches the tree,
and no module grown past about 600 lines without a written reason.

Import cycles are counted the strict way: every import in a module counts, also those
inside functions and under ``if TYPE_CHECKING:``, since a cycle hidden behind a lazy or
type-only import still ties two modules' designs together; and importing a submodule
from outside its package counts as importing the package too (Python runs the package's
``__init__`` first: a cycle through it fails as "partially initialized module").
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import snakemake_executor_plugin_vastai as plugin

PACKAGE_DIR = Path(plugin.__file__).resolve().parent
PKG = PACKAGE_DIR.name
MAP_PAGE = PACKAGE_DIR.parent / "docs" / "architecture.md"  # its list of folders and modules
LONG = 650  # lines: "about 600"
LONG_REASON = "Why this module is long:"  # said in the module docstring of a longer one


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found | implied_packages(name, found, known)


def implied_packages(name: str, targets: set[str], known: set[str]) -> set[str]:
    """Importing ``a.b.c`` from outside ``a.b`` first runs ``a.b``'s ``__init__``: an edge
    to that package too (its own packages are already loading, so they add none)."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    implied = set()
    for target in targets:
        parts = target.split(".")
        implied |= {".".join(parts[:i]) for i in range(2, len(parts))}
    return {p for p in implied if p in known and p not in own and p != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_the_package_has_no_import_cycle_counting_lazy_and_type_only_imports():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_type_only_cycle():
    """The check can fail: two modules importing each other, one only for typing."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "b" for n in ast.walk(tree))
    # a.x imports p.q.r from outside p.q: p.q's __init__ runs first, and it imports a.x
    known = {"a.x", "p.q", "p.q.r"}
    assert implied_packages("a.x", {"p.q.r"}, known) == {"p.q"}
    assert implied_packages("p.q.s", {"p.q.r"}, known | {"p.q.s"}) == set()  # its own


def readme_map() -> dict[str, str]:
    """docs/architecture.md's map of the package: ``- `path` what it holds`` per line."""
    text = MAP_PAGE.read_text()
    section = text.split("\n## The package, folder by folder\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- `([^`]+)`\s+(.+)$", section, flags=re.M))


def test_the_architecture_page_lists_every_package_and_top_module_and_no_other():
    listed = readme_map()
    actual = {f"{p.name}/" for p in PACKAGE_DIR.iterdir()
              if p.is_dir() and (p / "__init__.py").exists()}
    actual |= {p.name for p in PACKAGE_DIR.glob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    actual |= {f"transports/{p.name}/" for p in (PACKAGE_DIR / "transports").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert set(listed) == actual
    assert all(len(what) > 20 for what in listed.values())  # one line that says something


def test_no_module_is_much_over_600_lines_without_saying_why():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()
            if len(path.read_text().splitlines()) > LONG}
    unexplained = {name: n for name, n in long.items()
                   if LONG_REASON not in (ast.get_docstring(ast.parse(
                       modules()[name].read_text())) or "")}
    assert unexplained == {}, f"modules over {LONG} lines without '{LONG_REASON}'"


# -- the job's life cycle: who may move a job, and where its instance is torn down -------
def _functions(path: Path) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]


def _is_job_model(node: ast.expr) -> bool:
    """``self.m``, ``steps.m``, ``self.steps.m``: the job model as a transport holds it."""
    return isinstance(node, ast.Attribute) and node.attr == "m"


def test_transports_return_outcomes_and_never_write_the_job_model_or_fire_triggers():
    """Only the driver writes the job model and fires triggers; a transport returns an
    outcome (lifecycle/outcomes.py) and journals nothing but a retry, through its port."""
    found = []
    for path in sorted((PACKAGE_DIR / "transports").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Attribute) and _is_job_model(part.value):
                        found.append(f"{path.name}:{node.lineno} writes m.{part.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("fire", "finish_download", "record_failure"):
                found.append(f"{path.name}:{node.lineno} calls {node.func.attr}")
    assert found == []


TEARDOWN_CALLS = {"destroy", "destroy_label", "destroy_in_background", "destroy_stray"}


def test_the_driver_tears_a_jobs_instance_down_in_the_destroying_step_only():
    """One teardown call site per path through the job table: ``step_destroying``; plus
    ``_last_resort`` for a loop that broke (it cannot move through the table), and the
    strays a lost create answer made under the job's label (never the job's instance)."""
    sites = set()
    for path in sorted((PACKAGE_DIR / "lifecycle").glob("*.py")):
        for function in _functions(path):
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in TEARDOWN_CALLS:
                    sites.add(f"{path.stem}.{function.name}")
    assert sites == {"driver.step_destroying", "driver._last_resort", "renting._rent"}
