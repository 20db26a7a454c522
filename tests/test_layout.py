"""The package's layout rules, checked from the source: who may import what, and no cycles.

In the spirit of pip-tools' test_circular_imports.py, but read from the syntax tree, so one
test covers every module at once and the rules can be shown to fail on a package built for
the purpose (a rule nobody has seen fail proves nothing).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gptbatch"

PROVIDER_SDKS = ("openai", "anthropic", "google.genai", "httpx", "httpx2")
# What the simulator may import of the client: it must not share the estimator it checks.
SIMULATOR_MAY_IMPORT = ("gptbatch.simulator", "gptbatch.canonical", "gptbatch.errors")
SIMULATOR_MAY_IMPORT_MODULES = ("gptbatch.inputs.encodings",)
MAX_LINES = 650


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, where, and whether at module level."""

    module: str
    target: str
    line: int
    top_level: bool


def module_name(package: Path, path: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(package: Path) -> Iterator[Import]:
    """Every import in every module of `package`; relative imports resolved."""
    for path in sorted(package.rglob("*.py")):
        module = module_name(package, path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

        def visit(node: ast.AST, top: bool, module: str = module, pkg: bool = is_package):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _type_checking(child):
                    continue  # annotations only: never executed
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        yield Import(module, alias.name, child.lineno, top)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        anchor = module.split(".")
                        anchor = anchor if pkg else anchor[:-1]
                        anchor = anchor[: len(anchor) - (child.level - 1)]
                        base = ".".join([*anchor, base] if base else anchor)
                    for alias in child.names:
                        yield Import(module, f"{base}.{alias.name}", child.lineno, top)
                        yield Import(module, base, child.lineno, top)
                nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                yield from visit(child, top and not nested)

        yield from visit(tree, True)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules_of(package: Path) -> set[str]:
    return {module_name(package, p) for p in package.rglob("*.py")}


def layout_problems(package: Path) -> list[str]:
    """Every broken layout rule in `package`, as 'module:line: what' strings."""
    root = package.name
    modules = modules_of(package)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports_of(package):
        where = f"{imp.module}:{imp.line}"
        if _within(imp.target, PROVIDER_SDKS) and not _within(imp.module, (f"{root}.api",)):
            problems.append(f"{where}: imports the provider SDK {imp.target} outside {root}.api")
        if _within(imp.module, (f"{root}.simulator",)) and _within(imp.target, (root,)):
            allowed = tuple(p.replace("gptbatch", root, 1) for p in SIMULATOR_MAY_IMPORT)
            exact = tuple(p.replace("gptbatch", root, 1) for p in SIMULATOR_MAY_IMPORT_MODULES)
            ancestor = any(e.startswith(imp.target + ".") for e in exact)
            if not (ancestor or _within(imp.target, allowed) or _within(imp.target, exact)):
                problems.append(f"{where}: the simulator imports the client's {imp.target}")
        core = not _within(imp.module, (f"{root}.cli", f"{root}.__main__"))
        if core and _within(imp.target, (f"{root}.cli",)):
            problems.append(f"{where}: core module imports the CLI ({imp.target})")
        if imp.top_level and imp.target in modules and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in cycles(graph))
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            # A package's __init__ importing its own submodules is not a cycle that bites.
            if w not in index:
                strong(w)
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


# --- the rules hold for gptbatch ------------------------------------------------------------


def test_gptbatch_keeps_its_layout_rules() -> None:
    assert layout_problems(PACKAGE) == []


def test_no_module_is_too_long_to_read() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_module_says_what_it_owns() -> None:
    """A module's first statement is its docstring (the line a newcomer reads first)."""
    silent = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py" and ast.get_docstring(ast.parse(p.read_text("utf-8"))) is None
    ]
    assert silent == []


def test_core_modules_never_print() -> None:
    """Only the CLI (and the simulator's own command) print; the core reports events."""
    printing = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("cli", "simulator") or rel.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{rel}:{node.lineno}")
    assert printing == []


def test_each_package_module_imports_on_its_own() -> None:
    """Import every package (each pulls its modules) in one fresh interpreter, in a fixed
    order that starts from the leaves: an import-order dependency shows up as an error."""
    packages = sorted(
        (m for m in modules_of(PACKAGE) if not m.endswith("__main__")),
        key=lambda m: (-m.count("."), m),
    )
    code = f"import importlib\nfor m in {packages!r}:\n    importlib.import_module(m)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent
    )
    assert done.returncode == 0, done.stderr


# --- and each rule fails when broken --------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "gptbatch"
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    for folder in {p.parent for p in root.rglob("*.py")} | {root}:
        (folder / "__init__.py").touch()
    return root


GOOD = {
    "api/openai_remote.py": "import openai\n",
    "engine/build.py": "from gptbatch.api import openai_remote\nfrom gptbatch import errors\n",
    "errors.py": '"""errors"""\n',
    "canonical.py": '"""canonical"""\n',
    "inputs/encodings.py": '"""encodings"""\n',
    "inputs/tokens.py": '"""tokens"""\n',
    "simulator/service.py": (
        "from gptbatch import canonical, errors\nfrom gptbatch.inputs import encodings\n"
    ),
    "cli/build.py": "from gptbatch.engine import build\n",
}


def test_a_well_formed_package_passes(tmp_path: Path) -> None:
    assert layout_problems(_package(tmp_path, GOOD)) == []


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("engine/collect.py", "import openai\n", "provider SDK openai outside"),
        ("engine/collect.py", "def f():\n    from openai import OpenAI\n", "provider SDK"),
        ("commands/export.py", "import anthropic\n", "provider SDK anthropic"),
        ("simulator/results.py", "from gptbatch.inputs import tokens\n", "simulator imports"),
        ("engine/outputs.py", "from gptbatch.cli import build\n", "core module imports the CLI"),
        ("engine/a.py", "from gptbatch.engine import b\n", "import cycle"),
    ],
)
def test_each_rule_fails_when_broken(tmp_path: Path, name: str, body: str, expected: str) -> None:
    files = dict(GOOD)
    files[name] = files.get(name, "") + body
    if name == "engine/a.py":
        files["engine/b.py"] = "from gptbatch.engine import a\n"
    problems = layout_problems(_package(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_lazy_imports_break_no_cycle(tmp_path: Path) -> None:
    """An import inside a function runs at call time: it is how a cycle is legitimately cut."""
    files = dict(GOOD)
    files["engine/a.py"] = "from gptbatch.engine import b\n"
    files["engine/b.py"] = "def f():\n    from gptbatch.engine import a\n"
    assert layout_problems(_package(tmp_path, files)) == []
