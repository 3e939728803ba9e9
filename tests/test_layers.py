"""The package's layer rule, checked on every module's syntax tree.

Layers, bottom to top; a module may import from its own layer and the ones below, never above:

    errors, core  ->  tokenizer, data, prompts  ->  models  ->  checkpoint  ->  inference
                  ->  evaluation  ->  training  ->  recipes  ->  cli

Also: no import cycle between modules (imports inside functions count), no private name
(`_name`) imported from another module, and imports of the package inside functions only in
cli/ (which keeps `scratchllm --help` fast and torch-free that way).
"""

from __future__ import annotations

import ast
import subprocess
import sys
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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["__init__"]


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


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(target: str, names: list[str]) -> list[str]:
    """The modules an import statement loads: `from pkg import submodule` names the submodule."""
    out = [target] if target in MODULES else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return out or [target]


def test_every_module_sits_in_a_known_layer():
    for module in MODULES:
        layer(module)


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for module, path in MODULES.items():
        if module == "scratchllm":  # the package's lazy exports
            continue
        for target, names, _, line in imports(path):
            for imported in resolve(target, names):
                if imported != "scratchllm" and layer(imported) > layer(module):
                    upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_package_is_imported_inside_functions_only_in_the_cli():
    inside = [f"{path.relative_to(PACKAGE)}:{line} imports {target}"
              for module, path in MODULES.items() if module.split(".")[:2] != ["scratchllm", "cli"]
              for target, _, in_function, line in imports(path) if in_function]
    assert not inside, "imports inside functions:\n" + "\n".join(inside)


def test_no_private_name_is_imported_from_another_module():
    private = [f"{path.relative_to(PACKAGE)}:{line} takes {target}.{name}"
               for path in MODULES.values() for target, names, _, line in imports(path)
               for name in names if name.startswith("_") and name != "__version__"]
    assert not private, "private names imported:\n" + "\n".join(private)


def test_there_is_no_import_cycle():
    graph = {m: {i for t, names, _, _ in imports(p) for i in resolve(t, names) if i in MODULES and i != m}
             for m, p in MODULES.items()}
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
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


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
    out = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_VERB], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[-1] == "torch imported: False"
    assert {"scratchllm finetune instruct", "scratchllm evaluate fewshot", "scratchllm respond", "scratchllm serve"} <= set(lines)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_holds(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{module} has no module docstring"
