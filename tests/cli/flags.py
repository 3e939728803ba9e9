"""Every verb's flags as data: name, effective default, choices, how many values, required.

`tests/cli/flags_before_options_refactor.json` was written by `python -m tests.cli.flags` before the option
groups moved into their layers (issue 24); test_flags.py compares the parser of today with it, so that
regenerating the CLI from the config dataclasses changes no flag's name, default or meaning.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any


def _effective_default(action: argparse.Action) -> Any:
    # A flag whose value may come from a run file has no argparse default; its help names the default.
    if action.default is argparse.SUPPRESS:
        m = re.search(r"\(default: (.*)\)\s*$", action.help or "")
        return {"from_help": m.group(1)} if m else "<suppressed>"
    default = action.default
    try:
        json.dumps(default)
    except TypeError:
        default = repr(default)
    return list(default) if isinstance(default, tuple) else default


def flag_table(parser: argparse.ArgumentParser | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{"finetune classify": {"--lr": {...}, ...}, ...} for every verb and sub-verb."""
    if parser is None:
        from scratchllm.cli import build_parser

        parser = build_parser()
    out: dict[str, dict[str, dict[str, Any]]] = {}

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        flags = {}
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            key = "/".join(a.option_strings) if a.option_strings else f"<{a.dest}>"
            flags[key] = {
                "default": _effective_default(a),
                "nargs": a.nargs,
                "choices": list(a.choices) if a.choices else None,
                "required": bool(a.required),
                "type": getattr(a.type, "__name__", None) if a.type else None,
                "const": a.const if isinstance(a.const, (bool, int, float, str, type(None))) else repr(a.const),
            }
        if path:
            out[" ".join(path)] = flags
        for s in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
            for name, sp in s.choices.items():
                walk(sp, path + [name])

    walk(parser, [])
    return out


if __name__ == "__main__":
    json.dump(flag_table(), sys.stdout, indent=1, sort_keys=True)
    print()
