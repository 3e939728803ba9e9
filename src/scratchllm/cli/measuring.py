"""Verbs that measure a model: `evaluate TASK` (perplexity, fewshot, choice, responses), `inspect`
(pictures of one forward pass) and `info` (parameters, memory, FLOPs)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from scratchllm.cli.base import add_group, parser_for, verb
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




# evaluate: one sub-verb per task. A task defined in this module registers itself with
# @evaluate_task (the way verbs use @verb) and appears under `scratchllm evaluate`.

EVALUATE_TASKS: list[Callable[[argparse._SubParsersAction], None]] = []


def evaluate_task(add: Callable[[argparse._SubParsersAction], None]):
    """Register an `add_*(tasks)` function that adds one `scratchllm evaluate <task>` sub-verb."""
    EVALUATE_TASKS.append(add)
    return add


def eval_model_args(p: argparse.ArgumentParser) -> None:
    """Options every evaluation shares: the model, where it runs, and the JSON report."""
    p.add_argument("--model", required=True, help="model directory, run directory, Hugging Face GPT-2 directory or GPT-2 name")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, help="cast the weights: float32, bfloat16 or float16; None keeps them as stored")
    p.add_argument("--out", default=None, help="write the full JSON report here; None prints the table only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def print_report(args: argparse.Namespace, evaluate: Callable[[], dict]) -> None:
    """Run `evaluate` and print its table; with --out also write the JSON report, whose path is
    checked before the evaluation starts (an existing file needs --overwrite)."""
    from scratchllm.core.files import check_overwrite
    from scratchllm.evaluation.lm import format_report, write_report

    if args.out:
        check_overwrite(args.out, args.overwrite, "report file")
    report = evaluate()
    if args.out:
        write_report(report, args.out, overwrite=True)
    print(format_report(report))


@verb('evaluate')
def add_evaluate(sub):
    add_group(sub, "evaluate", "Evaluate a model: perplexity, few-shot classification, multiple choice, responses.",
               "task", EVALUATE_TASKS)


@evaluate_task
def add_evaluate_perplexity(tasks):
    p = parser_for(tasks, "perplexity", "Loss, perplexity and bits per byte on a text file or a data directory's val split (sliding window).")
    eval_model_args(p)
    p.add_argument("--data", required=True, help="UTF-8 text file, or a prepared data directory (its val split)")
    p.add_argument("--context-length", type=int, default=None, help="window length; None means the model's")
    p.add_argument("--stride", type=int, default=None, help="new tokens scored per window; None means half the window")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many tokens")

    def run(args):
        from scratchllm.evaluation.lm import evaluate_perplexity

        print_report(args, lambda: evaluate_perplexity(
            args.model, args.data, context_length=args.context_length, stride=args.stride,
            batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device, dtype=args.dtype,
            progress=sys.stderr.isatty()))

    p.set_defaults(func=run)


@evaluate_task
def add_evaluate_fewshot(tasks):
    p = parser_for(tasks, "fewshot", "Classify by prompting with K labelled examples; accuracy, per-class figures, the prompt used.")
    eval_model_args(p)
    p.add_argument("--data", required=True, help="labelled examples: .tsv (label<TAB>text, no header, as the SMS spam file), .csv or .jsonl")
    p.add_argument("--shots", type=int, default=0, help="labelled examples in each prompt (K)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split and of the shots drawn")
    p.add_argument("--text-column", default=None, help="text column: a 0-based index (no header) or a header name / JSON key; None means 'text' if the header has it, else column 1")
    p.add_argument("--label-column", default=None, help="label column, as --text-column; None means 'label' if the header has it, else column 0")
    p.add_argument("--labels", default=None, help="comma-separated candidate labels, e.g. 'ham,spam'; None means those in the data, sorted")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test examples")
    p.add_argument("--template", default="Message: {text}\\nLabel:", help="one example; {text} is replaced, the label follows after a space; \\n means newline")
    p.add_argument("--train-fraction", type=float, default=0.7, help="share of each class used as the pool of shots")
    p.add_argument("--train-data", default=None, help="draw shots from this file instead, and test on all of --data")
    p.add_argument("--keep-duplicates", action="store_true", help="keep repeated texts (default: one example per text, "
                   "compared case-folded on letters and digits, before splitting; with --train-data, shots whose text is in --data go)")

    def run(args):
        from scratchllm.evaluation.lm import evaluate_fewshot

        labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
        template = args.template.replace("\\n", "\n").replace("\\t", "\t")
        print_report(args, lambda: evaluate_fewshot(
            args.model, args.data, args.shots, seed=args.seed, text_column=args.text_column,
            label_column=args.label_column, labels=labels, limit=args.limit, template=template,
            train_fraction=args.train_fraction, train_data=args.train_data, keep_duplicates=args.keep_duplicates,
            device=args.device, dtype=args.dtype, progress=sys.stderr.isatty()))

    p.set_defaults(func=run)


@evaluate_task
def add_evaluate_choice(tasks):
    p = parser_for(tasks, "choice", "Multiple choice from JSONL (context, choices, label): acc and length-normalised acc_norm.")
    eval_model_args(p)
    p.add_argument("--data", required=True, help='JSONL, one task a line: {"context": str, "choices": [str, ...], "label": int}')
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks")

    def run(args):
        from scratchllm.evaluation.lm import evaluate_choice

        print_report(args, lambda: evaluate_choice(args.model, args.data, limit=args.limit, device=args.device,
                                                   dtype=args.dtype, progress=sys.stderr.isatty()))

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




@evaluate_task
def add_evaluate_responses(tasks):
    p = parser_for(tasks, "responses", "Score model responses: ROUGE-L F1, exact match, and optionally an LLM judge (0-100).")
    p.add_argument("--data", required=True, help="responses JSON from `scratchllm respond` (records with output and model_response)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible server, e.g. http://localhost:11434 (Ollama)")
    p.add_argument("--judge-model", default=None, help="the judge model's name on that server, e.g. llama3")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request")
    p.add_argument("--out", default=None, help="write the JSON report (with per-record scores) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    def run(args):
        import os

        from scratchllm.evaluation.responses import evaluate_responses, format_evaluation

        report = evaluate_responses(args.data, judge_url=args.judge_url, judge_model=args.judge_model, out=args.out,
                                    timeout=args.timeout, api_key=os.environ.get("OPENAI_API_KEY"),
                                    progress=sys.stderr.isatty(), overwrite=args.overwrite)
        print(format_evaluation(report))

    p.set_defaults(func=run)
