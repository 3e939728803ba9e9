"""The package's layer rule, checked on every module's syntax tree.

Layers, bottom to top; a module may import from its own layer and the ones below, never above:

    errors, core  ->  tokenizer, data, prompts  ->  models  ->  checkpoint  ->  inference
                  ->  evaluation  ->  training  ->  recipes  ->  cli

Also: no import cycle between modules (imports inside functions count), no private name
(`_name`) imported from another module, and imports of the package inside functions only in
cli/ (which keeps `scratchllm --help` fast and torch-free that way).

Each rule is a function that lists the offences in a package; the tests assert that the list is
empty for scratchllm, and that each rule does find the offences planted in a small fake package
(so that a rule that silently finds nothing fails here).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scratchllm"
LAYERS = {
    "errors": 0, "core": 0,
    "tokenizer": 1, "data": 1, "prompts": 1,
    "models": 2,
    "checkpoint": 3,
    "inference": 4,
    "evaluation": 5,
    "training": 6,
    "recipes": 7,
    "cli": 8, "__main__": 8, "__init__": 8,
}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """The module's layer (None for a module outside every known layer)."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else LAYERS["__init__"]


def imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, names, inside a function, line) for every import of the package."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("scratchllm"):
                found.append((child.module, [a.name for a in child.names], in_function, child.lineno))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("scratchllm"):
                        found.append((alias.name, [], in_function, child.lineno))
            visit(child, nested)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def modules_of(package: Path) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def resolve(modules: dict[str, Path], target: str, names: list[str]) -> list[str]:
    """The modules an import statement loads: `from pkg import submodule` names the submodule."""
    out = [target] if target in modules else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return out or [target]


# ------------------------------------------------------------------------------------------------
# The rules: each returns its offences, one line each


def outside_the_layers(modules: dict[str, Path]) -> list[str]:
    return [f"{m} is in no layer (known: {', '.join(LAYERS)})" for m in modules if layer(m) is None]


def upward_imports(modules: dict[str, Path]) -> list[str]:
    upward = []
    for module, path in modules.items():
        if module == "scratchllm" or layer(module) is None:  # the package's lazy exports; unknown: reported above
            continue
        for target, names, _, line in imports(path):
            for imported in resolve(modules, target, names):
                above = layer(imported)
                if imported != "scratchllm" and above is not None and above > layer(module):
                    upward.append(f"{path.name}:{line} ({module}) imports {imported}")
    return upward


def imports_inside_functions(modules: dict[str, Path]) -> list[str]:
    return [f"{module}:{line} imports {target}"
            for module, path in modules.items() if module.split(".")[:2] != ["scratchllm", "cli"]
            for target, _, in_function, line in imports(path) if in_function]


def private_imports(modules: dict[str, Path]) -> list[str]:
    return [f"{module}:{line} takes {target}.{name}"
            for module, path in modules.items() for target, names, _, line in imports(path)
            for name in names if name.startswith("_") and name != "__version__"]


def import_cycles(modules: dict[str, Path]) -> list[str]:
    graph = {m: {i for t, names, _, _ in imports(p) for i in resolve(modules, t, names) if i in modules and i != m}
             for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how Python packages work, not a cycle
    for m in graph:
        graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    return cycles


def without_docstring(modules: dict[str, Path]) -> list[str]:
    return [m for m, p in modules.items() if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]


RULES = [outside_the_layers, upward_imports, imports_inside_functions, private_imports, import_cycles,
         without_docstring]
MODULES = modules_of(PACKAGE)


# ------------------------------------------------------------------------------------------------
# scratchllm keeps every rule


def test_the_package_is_where_the_rules_look():
    """A wrong PACKAGE path would make every rule below pass on nothing."""
    assert len(MODULES) > 80
    assert {"scratchllm", "scratchllm.models.gpt", "scratchllm.cli", "scratchllm.training.loop"} <= set(MODULES)
    found = {(target, tuple(names), inside) for target, names, inside, _ in imports(MODULES["scratchllm.training.loop"])}
    assert ("scratchllm.errors", ("ScratchLLMError",), False) in found


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_scratchllm_keeps_the_rule(rule):
    offences = rule(MODULES)
    assert offences == [], f"{rule.__name__}:\n" + "\n".join(offences)


# ------------------------------------------------------------------------------------------------
# Each rule finds what it is for

FAKE = {
    "__init__.py": '"""The fake package."""\n',
    "core/__init__.py": '"""Bottom layer."""\n',
    "core/low.py": '"""Imports upward and from a private name."""\nfrom scratchllm.models.high import _hidden\n',
    "models/__init__.py": '"""Middle layer."""\n',
    "models/high.py": textwrap.dedent('''\
        """Imports down, inside a function."""
        def f():
            from scratchllm.core import low
        _hidden = 1
        '''),
    "gadgets/thing.py": "x = 1\n",
}


@pytest.fixture
def fake_package(tmp_path) -> dict[str, Path]:
    root = tmp_path / "scratchllm"
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return modules_of(root)


@pytest.mark.parametrize("rule, expected", [
    (outside_the_layers, [f"scratchllm.gadgets.thing is in no layer (known: {', '.join(LAYERS)})"]),
    (upward_imports, ["low.py:2 (scratchllm.core.low) imports scratchllm.models.high"]),
    (imports_inside_functions, ["scratchllm.models.high:3 imports scratchllm.core"]),
    (private_imports, ["scratchllm.core.low:2 takes scratchllm.models.high._hidden"]),
    (import_cycles, ["scratchllm.core.low -> scratchllm.models.high -> scratchllm.core.low"]),
    (without_docstring, ["scratchllm.gadgets.thing"]),
], ids=lambda x: x.__name__ if callable(x) else "")
def test_each_rule_finds_the_offences_planted_in_a_fake_package(fake_package, rule, expected):
    assert rule(fake_package) == expected


# ------------------------------------------------------------------------------------------------
# The CLI's help

HELP_OF_EVERY_VERB = """
import argparse, sys
import scratchllm.cli as c

def walk(parser, path):
    parser.format_help()  # raises on a help string argparse cannot format
    print(" ".join(path))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                walk(sub, path + [name])

walk(c.build_parser(), ["scratchllm"])
print("torch imported:", "torch" in sys.modules)
"""


def test_cli_help_of_every_verb_formats_without_torch():
    done = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_VERB], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "torch imported: False"
    assert {"scratchllm finetune instruct", "scratchllm evaluate fewshot", "scratchllm respond", "scratchllm serve"} <= set(lines)
