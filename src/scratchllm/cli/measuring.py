"""Verbs that look at a model: `inspect` (pictures of one forward pass) and `info` (parameters, memory,
FLOPs). `evaluate TASK` is in cli/evaluating.py."""

from __future__ import annotations

import json
import sys

from scratchllm.cli.base import parser_for, verb
from scratchllm.errors import ScratchLLMError


# info


@verb('info')
def add_info(sub):
    p = parser_for(sub, "info", "Parameters, memory and FLOPs per token of a preset, config or model directory.")
    p.add_argument("--model", help="preset name, config.json or model directory")
    p.add_argument("--compare", nargs="+", metavar="MODEL", help="several presets/configs/directories side by side")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--out", default=None, help="also draw a chart to this PNG: the parameter breakdown, or with --compare the parameter counts")

    def run(args):
        from scratchllm.evaluation.info import format_comparison, format_info, model_info

        if bool(args.model) == bool(args.compare):
            raise ScratchLLMError("give either --model or --compare (not both, not neither)")
        if args.compare:
            infos = [model_info(m) for m in args.compare]
            print(json.dumps(infos, indent=2) if args.json else format_comparison(infos))
            if args.out:
                from scratchllm.evaluation.inspect import plot_parameter_comparison

                print(f"wrote {plot_parameter_comparison(infos, args.out)}", file=sys.stderr)
            return
        info = model_info(args.model)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        if args.out:
            from scratchllm.evaluation.inspect import plot_parameter_breakdown

            print(f"wrote {plot_parameter_breakdown(info, args.out)}", file=sys.stderr)

    p.set_defaults(func=run)




# inspect: pictures of one forward pass


@verb('inspect')
def add_inspect(sub):
    p = parser_for(sub, "inspect", "Look inside: token boundaries, attention heat maps, next-token probabilities.")
    views = p.add_subparsers(dest="view", metavar="VIEW")

    a = parser_for(views, "attention", "Attention weights of every layer/head for a text, as a grid of heat maps (PNG).")
    a.add_argument("--model", required=True, help="model directory, run directory or GPT-2 name")
    a.add_argument("--text", required=True, help="the text whose attention to draw")
    a.add_argument("--out", required=True, help="PNG file to write")
    a.add_argument("--layers", default="all", help="'all' or comma-separated layer indices, e.g. 0,1")
    a.add_argument("--heads", default="all", help="'all' or comma-separated head indices")
    a.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")

    def run_attention(args):
        from scratchllm.evaluation.inspect import inspect_attention

        result = inspect_attention(args.model, args.text, args.out, layers=args.layers, heads=args.heads,
                                   device=args.device)
        print(f"wrote {result['out']}: {len(result['layers'])} layer(s) x {len(result['heads'])} head(s), "
              f"{len(result['tokens'])} tokens")

    a.set_defaults(func=run_attention)

    n = parser_for(views, "next-token", "The top-k next tokens after a text, with probabilities (and a bar chart with --out).")
    n.add_argument("--model", required=True, help="model directory, run directory or GPT-2 name")
    n.add_argument("--text", required=True, help="the text to continue")
    n.add_argument("--top-k", type=int, default=10, help="how many candidates to show")
    n.add_argument("--out", default=None, help="also draw a bar chart to this PNG")
    n.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")

    def run_next_token(args):
        from scratchllm.evaluation.inspect import format_next_token, inspect_next_token

        result = inspect_next_token(args.model, args.text, top_k=args.top_k, out=args.out, device=args.device)
        print(format_next_token(result))

    n.set_defaults(func=run_next_token)

    t = parser_for(views, "tokens", "The text with its token boundaries marked (colours in a terminal, [brackets] otherwise) and the ids.")
    t.add_argument("--tokenizer", default="gpt2", help="gpt2 or a tokenizer .json file")
    t.add_argument("--text", required=True, help="the text to tokenize")
    t.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the tokens (auto: when stdout is a terminal)")

    def run_tokens(args):
        from scratchllm.evaluation.inspect import inspect_tokens

        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        print(inspect_tokens(args.tokenizer, args.text, color))

    t.set_defaults(func=run_tokens)

    def run(args):
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=run)
