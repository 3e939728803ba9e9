"""Verbs that look at a model: `inspect` (pictures of one forward pass) and `info` (parameters, memory,
FLOPs). `evaluate TASK` is in cli/evaluating.py."""

from __future__ import annotations

import json
import sys

from scratchllm.cli.base import add_config, parser_for, verb


# info


@verb('info')
def add_info(sub):
    p = parser_for(sub, "info", "Parameters, memory and FLOPs per token of a preset, config or model directory.")
    from scratchllm.evaluation.config import InfoConfig

    flags = add_config(p, InfoConfig, plain=True)

    def run(args):
        from scratchllm.evaluation.info import format_comparison, format_info, model_info

        cfg = flags.config(args)
        if cfg.compare:
            infos = [model_info(m) for m in cfg.compare]
            print(json.dumps(infos, indent=2) if cfg.json else format_comparison(infos))
            if cfg.out:
                from scratchllm.evaluation.inspect import plot_parameter_comparison

                print(f"wrote {plot_parameter_comparison(infos, cfg.out)}", file=sys.stderr)
            return
        info = model_info(cfg.model)
        print(json.dumps(info, indent=2) if cfg.json else format_info(info))
        if cfg.out:
            from scratchllm.evaluation.inspect import plot_parameter_breakdown

            print(f"wrote {plot_parameter_breakdown(info, cfg.out)}", file=sys.stderr)

    p.set_defaults(func=run)




# inspect: pictures of one forward pass


@verb('inspect')
def add_inspect(sub):
    p = parser_for(sub, "inspect", "Look inside: token boundaries, attention heat maps, next-token probabilities.")
    from scratchllm.evaluation.config import InspectAttentionConfig, InspectNextTokenConfig, InspectTokensConfig

    views = p.add_subparsers(dest="view", metavar="VIEW")
    a = parser_for(views, "attention", "Attention weights of every layer/head for a text, as a grid of heat maps (PNG).")
    attention = add_config(a, InspectAttentionConfig, plain=True)

    def run_attention(args):
        from scratchllm.evaluation.inspect import inspect_attention

        cfg = attention.config(args)
        result = inspect_attention(cfg.load.model, cfg.text, cfg.out, layers=cfg.layers, heads=cfg.heads,
                                   device=cfg.load.device)
        print(f"wrote {result['out']}: {len(result['layers'])} layer(s) x {len(result['heads'])} head(s), "
              f"{len(result['tokens'])} tokens")

    a.set_defaults(func=run_attention)

    n = parser_for(views, "next-token", "The top-k next tokens after a text, with probabilities (and a bar chart with --out).")
    next_token = add_config(n, InspectNextTokenConfig, plain=True)

    def run_next_token(args):
        from scratchllm.evaluation.inspect import format_next_token, inspect_next_token

        cfg = next_token.config(args)
        result = inspect_next_token(cfg.load.model, cfg.text, top_k=cfg.top_k, out=cfg.out, device=cfg.load.device)
        print(format_next_token(result))

    n.set_defaults(func=run_next_token)

    t = parser_for(views, "tokens", "The text with its token boundaries marked (colours in a terminal, [brackets] otherwise) and the ids.")
    tokens = add_config(t, InspectTokensConfig, plain=True)

    def run_tokens(args):
        from scratchllm.evaluation.inspect import inspect_tokens

        cfg = tokens.config(args)
        color = cfg.color == "always" or (cfg.color == "auto" and sys.stdout.isatty())
        print(inspect_tokens(cfg.tokenizer, cfg.text, color))

    t.set_defaults(func=run_tokens)

    def run(args):
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=run)
