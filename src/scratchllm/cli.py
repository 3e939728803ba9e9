"""The `scratchllm` command line: one verb per library function.

Each verb is a small `add_<verb>` function that declares its arguments and a `run` function that calls
the library; all the work lives in the library modules so notebooks and tests use the same path.
Bad input raises ScratchLLMError, printed here as one line on stderr with exit code 2. Results go to
stdout so they can be piped; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from scratchllm.errors import ScratchLLMError

VERBS: list[Callable[[argparse._SubParsersAction], None]] = []


def verb(add: Callable[[argparse._SubParsersAction], None]):
    """Register a verb's `add_*` function (verbs appear in `--help` in registration order)."""
    VERBS.append(add)
    return add


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


# --------------------------------------------------------------------------------------------------
# info


@verb
def add_info(sub):
    p = _parser(sub, "info", "Parameters, memory and FLOPs per token of a preset, config or model directory.")
    p.add_argument("--model", required=True, help="preset name, config.json or model directory")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")

    def run(args):
        from scratchllm.info import format_info, model_info

        info = model_info(args.model)
        print(json.dumps(info, indent=2) if args.json else format_info(info))

    p.set_defaults(func=run)


# >>> new verbs go above this line (keep this marker) <<<


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Build, train, fine-tune, evaluate and serve GPT-style language models from scratch.",
    )
    from scratchllm import __version__

    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except ScratchLLMError as exc:
        print(f"scratchllm {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scratchllm {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
