"""The package's layout holds: facts and compute, studies, presentation (docs/ARCHITECTURE.md).

Read from the source (every import, lazy ones inside functions included), not from a list kept
by hand: no import cycle; compute modules hold no command line and import neither the studies nor
the report package; the report package never imports a study; no library code imports the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

from covid_xray import config

PACKAGE = config.PROJECT_ROOT / "covid_xray"
# App-side modules that show what the report package reads (the Quiz tab, the shortcut panel,
# the runtime's page state); first-start provisioning runs two studies as the commands do.
MAY_IMPORT_REPORT = {"covid_xray.quiz", "covid_xray.teaching", "covid_xray.runtime"}
MAY_IMPORT_STUDIES = {"covid_xray.provision"}
# The one user-facing command outside the studies: prediction from the shell.
COMMAND_LINE_MODULES = {"covid_xray.predict"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(config.PROJECT_ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every covid_xray module (or `tests`, or `argparse`) that a file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in modules or m.split(".")[0] in ("tests", "argparse")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name, "covid_xray"} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_the_checker_sees_a_cycle_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere_in_the_package():
    assert _cycles(_graph()) == []


def test_each_layer_imports_only_the_layers_it_may():
    problems = []
    for name, imported in _graph().items():
        studies = {m for m in imported if m.startswith("covid_xray.studies")}
        report = {m for m in imported if m.startswith("covid_xray.report")}
        if any(m.split(".")[0] == "tests" for m in imported):
            problems.append(f"{name} imports the tests")
        if name.startswith("covid_xray.report") and studies:
            problems.append(f"{name} (presentation) imports {sorted(studies)}")
        if name.startswith(("covid_xray.studies", "covid_xray.report")):
            continue
        if "argparse" in imported and name not in COMMAND_LINE_MODULES:
            problems.append(f"{name} holds a command line: it belongs in covid_xray.studies")
        if studies and name not in MAY_IMPORT_STUDIES:
            problems.append(f"{name} imports {sorted(studies)}")
        if report and name not in MAY_IMPORT_REPORT:
            problems.append(f"{name} imports {sorted(report)}")
    assert problems == []


def test_every_study_is_a_command():
    """Each module of covid_xray/studies has a `main` and runs as `python -m` (its own __main__)."""
    for path in sorted((PACKAGE / "studies").glob("*.py")):
        if path.name.startswith("_"):  # __init__ and shared helpers (_options)
            continue
        text = path.read_text(encoding="utf-8")
        assert "def main(" in text and 'if __name__ == "__main__":' in text, path.name
