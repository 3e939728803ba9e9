"""The `scratchllm` command line: one verb per library function, and the one place that prints results.

Each verb is a small `add_<verb>` function that declares its arguments and a `run` function that calls
the library; all the work lives in the library so notebooks and tests use the same path. Options
with many settings come from the library's config dataclasses (`add_options`: one flag per field,
its type, default and help declared once, beside the field). Bad input raises ScratchLLMError,
printed here as one line on stderr with exit code 2. Results go to stdout so they can be piped;
progress and logs go to stderr. The package is imported inside the `run` functions, so that
`scratchllm --help` stays fast and needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable

from scratchllm.core.options import option_fields
from scratchllm.errors import ScratchLLMError

# The verbs in the order of a model's life, grouped for `scratchllm --help`.
GROUPS = [
    ("text and data", ["tokenizer", "prepare"]),
    ("training", ["pretrain", "demo", "finetune"]),
    ("using a model", ["generate", "chat", "serve", "classify", "fill-mask", "translate", "respond"]),
    ("measuring", ["evaluate", "inspect", "info"]),
    ("converting", ["import-hf", "export-hf", "merge-lora"]),
]
VERBS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def verb(name: str):
    """Register the `add_*` function of verb `name` (listed in --help by GROUPS)."""

    def register(add: Callable[[argparse._SubParsersAction], None]):
        VERBS[name] = add
        return add

    return register


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in --help, except when there is none to show (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser(sub: argparse._SubParsersAction, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_DefaultsFormatter, **kwargs)


def _add_group(sub: argparse._SubParsersAction, name: str, help: str, dest: str,
               members: list[Callable[[argparse._SubParsersAction], None]]) -> None:
    """A verb made of sub-verbs (`evaluate TASK`, `finetune RECIPE`); alone, it prints its help."""
    p = _parser(sub, name, help)
    group = p.add_subparsers(dest=dest, metavar=dest.upper())
    for add in members:
        add(group)

    def run(args):
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=run)


def add_options(p: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
                defaults_from_elsewhere: bool = False) -> list[str]:
    """One flag per field of the config dataclass `cls` (--max-steps for max_steps); returns the names.

    Types, defaults, choices (a Literal's values) and help come from the field. Booleans get
    --x / --no-x. With `defaults_from_elsewhere`, a flag left out is absent from the parsed args
    (so a run file or a resumed run can supply the value); the help still shows the default.
    """
    names = []
    for f in option_fields(cls):
        if f.name in exclude:
            continue
        names.append(f.name)
        required = f.default is dataclasses.MISSING
        help = f.help.replace("%", "%%")  # argparse formats help strings with %
        kwargs: dict[str, Any] = {"dest": f.name, "help": help}
        if defaults_from_elsewhere:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] = f"{help} (default: {f.default!r})"
        elif required:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if f.kind is list else f.default  # a list's default is filled in later
        if f.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.kind == "flag_or_str":  # --resume, or --resume RUNDIR
            kwargs.update(nargs="?", const=True, metavar=f.name.upper())
        elif f.kind is list:
            kwargs.update(nargs="+", action="extend", metavar=f.name.upper().rstrip("S"))
        elif f.kind is tuple:
            kwargs.update(nargs=f.length, type=float, metavar=f.name.upper())
        else:
            kwargs.update(type=f.kind, metavar=f.name.upper())
            if f.choices is not None:
                kwargs.update(choices=f.choices, metavar=None)
        p.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return names


def options_of(args: argparse.Namespace, cls: type, names: list[str], **fixed: Any) -> Any:
    """The config dataclass `cls` built from the parsed flags `names` (an unset list keeps its default)."""
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values = {n: v for n, v in values.items() if v is not None or not _is_list(cls, n)}
    return cls(**values, **fixed)


def _is_list(cls: type, name: str) -> bool:
    return any(f.name == name and f.kind is list for f in option_fields(cls))


# --------------------------------------------------------------------------------------------------
# info


@verb('info')
def add_info(sub):
    p = _parser(sub, "info", "Parameters, memory and FLOPs per token of a preset, config or model directory.")
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


# --------------------------------------------------------------------------------------------------
# tokenizer: train a byte-level BPE, look at what a tokenizer does


@verb('tokenizer')
def add_tokenizer(sub):
    p = _parser(sub, "tokenizer", "Train a byte-level BPE tokenizer or encode text with one.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="learn a BPE vocabulary from text files", formatter_class=_DefaultsFormatter)
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files (one document each)")
    t.add_argument("--vocab-size", type=int, required=True, help="256 byte tokens + merges + special tokens")
    t.add_argument("--out", required=True, help="tokenizer JSON file to write")
    t.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"], help="special tokens appended to the vocabulary")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e = actions.add_parser("encode", help="print the ids and pieces of a text", formatter_class=_DefaultsFormatter)
    e.add_argument("--tokenizer", default="gpt2", help="gpt2 or a tokenizer JSON file")
    e.add_argument("--text", required=True)
    e.add_argument("--json", action="store_true", help="print [[id, piece], ...] as JSON")

    def run(args):
        import time

        from scratchllm.tokenizer import Tokenizer, token_pieces, train_tokenizer

        if args.action == "train":
            start = time.perf_counter()
            tok = train_tokenizer(args.input, args.vocab_size, args.out, special_tokens=args.special_tokens,
                                  overwrite=args.overwrite)
            print(f"trained {tok.vocab_size} tokens in {time.perf_counter() - start:.1f} s -> {args.out}")
            return
        pairs = token_pieces(Tokenizer.from_spec(args.tokenizer), args.text)
        if args.json:
            print(json.dumps(pairs, ensure_ascii=False))
            return
        print(" ".join(str(i) for i, _ in pairs))
        print(" ".join(repr(piece) for _, piece in pairs))
        print(f"{len(pairs)} tokens, {len(args.text.encode('utf-8'))} bytes")

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# checkpoints: GPT-2 weights in, Hugging Face directories out


@verb('import-hf')
def add_import_hf(sub):
    p = _parser(sub, "import-hf", "Convert a Hugging Face checkpoint (a hub name, downloaded once, or a Hugging Face directory) "
                "to a scratchllm model directory.", aliases=["import-gpt2"])
    p.add_argument("--source", required=True, help="a hub name (gpt2, gpt2-medium, ...) or a Hugging Face model directory")
    p.add_argument("--out", required=True, help="scratchllm model directory to write")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights (default: as stored)")

    def run(args):
        from scratchllm.checkpoint.convert import import_hf

        print(import_hf(args.source, args.out, dtype=args.dtype))

    p.set_defaults(func=run)


@verb('export-hf')
def add_export_hf(sub):
    p = _parser(sub, "export-hf", "Write a scratchllm model as a Hugging Face directory of its family (GPT-2, Llama, Qwen2, Qwen3) that transformers loads.")
    p.add_argument("--model", required=True, help="scratchllm model directory, run directory, Hugging Face GPT-2 directory or GPT-2 name")
    p.add_argument("--out", required=True, help="Hugging Face directory to write")

    def run(args):
        from scratchllm.checkpoint.convert import export_hf

        print(export_hf(args.model, args.out))

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# evaluate: one sub-verb per task. A task defined elsewhere in this file registers itself with
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
    _add_group(sub, "evaluate", "Evaluate a model: perplexity, few-shot classification, multiple choice, responses.",
               "task", EVALUATE_TASKS)


@evaluate_task
def add_evaluate_perplexity(tasks):
    p = _parser(tasks, "perplexity", "Loss, perplexity and bits per byte on a text file or a data directory's val split (sliding window).")
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
    p = _parser(tasks, "fewshot", "Classify by prompting with K labelled examples; accuracy, per-class figures, the prompt used.")
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
    p = _parser(tasks, "choice", "Multiple choice from JSONL (context, choices, label): acc and length-normalised acc_norm.")
    eval_model_args(p)
    p.add_argument("--data", required=True, help='JSONL, one task a line: {"context": str, "choices": [str, ...], "label": int}')
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks")

    def run(args):
        from scratchllm.evaluation.lm import evaluate_choice

        print_report(args, lambda: evaluate_choice(args.model, args.data, limit=args.limit, device=args.device,
                                                   dtype=args.dtype, progress=sys.stderr.isatty()))

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# inspect: pictures of one forward pass


@verb('inspect')
def add_inspect(sub):
    p = _parser(sub, "inspect", "Look inside: token boundaries, attention heat maps, next-token probabilities.")
    views = p.add_subparsers(dest="view", metavar="VIEW")

    a = _parser(views, "attention", "Attention weights of every layer/head for a text, as a grid of heat maps (PNG).")
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

    n = _parser(views, "next-token", "The top-k next tokens after a text, with probabilities (and a bar chart with --out).")
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

    t = _parser(views, "tokens", "The text with its token boundaries marked (colours in a terminal, [brackets] otherwise) and the ids.")
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


@verb('prepare')
def add_prepare(sub):
    p = _parser(sub, "prepare", "Tokenize text files, directories or JSONL into a DATADIR of token shards for pretraining.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="text files, directories (recursively *.txt, *.md, *.jsonl with a 'text' field) or glob patterns")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a tokenizer .json file")
    p.add_argument("--out", required=True, metavar="DATADIR", help="output directory (must not exist or be empty)")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of documents (or of the token stream) held out")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output is identical for any number)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="undecodable UTF-8: stop with the file and byte offset, or substitute U+FFFD")
    p.add_argument("--context-length", type=int, default=1024,
                   help="training window; the corpus needs one window of tokens, val gets one when possible")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    p.add_argument("--seed", type=int, default=0, help="seed of the document split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DATADIR (only once the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def run(args):
        import time

        from scratchllm.data.prepare import prepare, summary_line

        start = time.perf_counter()
        meta = prepare(args.input, args.tokenizer, args.out, val_fraction=args.val_fraction, workers=args.workers,
                       errors=args.errors, shard_tokens=args.shard_tokens, seed=args.seed,
                       progress=not args.no_progress, context_length=args.context_length, overwrite=args.overwrite)
        print(summary_line(meta, args.out, time.perf_counter() - start))

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# pretraining (scratchllm.train)

@verb('pretrain')
def add_pretrain(sub):
    p = _parser(sub, "pretrain", "Pretrain a GPT on a text file or prepared DATADIR (single process, or DDP/FSDP under torchrun).")
    from scratchllm.recipes.config import PretrainConfig
    from scratchllm.training.config import TrainConfig

    run_names = add_options(p, PretrainConfig)
    train_names = add_options(p.add_argument_group("training (TrainConfig; a flag left out keeps the run file's or "
                                                   "the resumed run's value)"), TrainConfig, defaults_from_elsewhere=True)

    def run(args):
        from scratchllm.recipes.pretrain import pretrain

        options = {n: getattr(args, n) for n in run_names if n not in ("data", "model", "out")}
        options.update({n: getattr(args, n) for n in train_names if hasattr(args, n)})
        summary = pretrain(args.data, args.model, args.out, **options)
        if summary["rank"] == 0:  # under torchrun, one summary
            print(json.dumps(summary))
        return summary["exit_code"]  # 0, or 130 / 143 after SIGINT / SIGTERM (a checkpoint was saved)

    p.set_defaults(func=run)


@verb('demo')
def add_demo(sub):
    p = _parser(sub, "demo", "The whole pipeline in minutes, no download: tokenizer, data, pretraining, samples, a model to generate from.")
    from scratchllm.recipes.config import DemoConfig

    names = add_options(p, DemoConfig)

    def run(args):
        from scratchllm.recipes.demo import demo

        cfg = options_of(args, DemoConfig, names)
        fields = dataclasses.asdict(cfg)
        summary = demo(**fields | {"n_layers": fields.pop("layers"), "n_heads": fields.pop("heads")})
        print(json.dumps(summary))
        return summary["exit_code"]  # 0, or 130 / 143 after SIGINT / SIGTERM (a checkpoint was saved)

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# instruction responses, LoRA merging, response evaluation (scratchllm.instruct, scratchllm.lora)


@verb('respond')
def add_respond(sub):
    p = _parser(sub, "respond", "Generate a response to each instruction record; save the records with a model_response field.")
    from scratchllm.inference.config import RespondConfig

    names = add_options(p, RespondConfig)

    def run(args):
        from scratchllm.evaluation.responses import respond

        cfg = options_of(args, RespondConfig, names)
        records = respond(**dataclasses.asdict(cfg), progress=sys.stderr.isatty())
        print(f"{len(records)} responses written to {args.out}")

    p.set_defaults(func=run)


@verb('merge-lora')
def add_merge_lora(sub):
    p = _parser(sub, "merge-lora", "Fold LoRA adapters into the base weights: a plain model directory.")
    p.add_argument("--model", default=None, help="a directory holding base weights + adapters (a LoRA run's checkpoint, "
                   "or a model directory with adapter.safetensors beside its weights)")
    p.add_argument("--base", default=None, help="base model (directory or GPT-2 name) for --adapter; if omitted, the adapter's recorded base_model")
    p.add_argument("--adapter", default=None, help="adapter directory (adapter.safetensors + adapter_config.json), e.g. RUNDIR/adapter")
    p.add_argument("--out", required=True, help="model directory to write")

    def run(args):
        from scratchllm.checkpoint.convert import merge_lora_dir

        print(merge_lora_dir(args.out, model=args.model, base=args.base, adapter=args.adapter))

    p.set_defaults(func=run)


@evaluate_task
def add_evaluate_responses(tasks):
    p = _parser(tasks, "responses", "Score model responses: ROUGE-L F1, exact match, and optionally an LLM judge (0-100).")
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


# --------------------------------------------------------------------------------------------------
# finetune: one sub-verb per recipe. A recipe defined anywhere in this file registers its
# `add_finetune_<name>(recipes)` with @finetune_recipe (the way verbs use @verb) and appears as
# `scratchllm finetune <name>`; errors print as "scratchllm finetune: error: ...".

FINETUNE_RECIPES: list[Callable[[argparse._SubParsersAction], None]] = []


def finetune_recipe(add: Callable[[argparse._SubParsersAction], None]):
    """Register an `add_*(recipes)` function that adds one `scratchllm finetune <recipe>` sub-verb."""
    FINETUNE_RECIPES.append(add)
    return add


@verb('finetune')
def add_finetune(sub):
    _add_group(sub, "finetune", "Fine-tune a pretrained model: classify (a head on a text's last token), instruct "
               "(full or LoRA), dpo.", "recipe", FINETUNE_RECIPES)


@finetune_recipe
def add_finetune_classify(recipes):
    p = _parser(recipes, "classify", "Turn a pretrained GPT into a text classifier (a head on the last real token's hidden state).")
    from scratchllm.recipes.config import ClassifyConfig

    names = add_options(p, ClassifyConfig, exclude=("progress",))

    def run(args):
        from scratchllm.evaluation.metrics import format_classification
        from scratchllm.recipes.classify import finetune_classifier, format_history

        report = finetune_classifier(options_of(args, ClassifyConfig, names, progress=sys.stderr.isatty()))
        print(format_history(report["epochs"]))
        print()
        print(format_classification(report["test"], "test"))
        best = report["best"]
        last = report["epochs"][-1]["epoch"] if report["epochs"] else None
        if report["final_epoch"] is not None and (report["stopped"] == "patience" or report["final_epoch"] != last):
            early = f"stopped early after epoch {last:g}; " if report["stopped"] == "patience" else ""
            print(f"({early}final/ holds epoch {report['final_epoch']:g}, the lowest validation loss)")
        elif best is not None and best["epoch"] is not None and best["epoch"] != report["final_epoch"]:
            print(f"(best/ is epoch {best['epoch']:g}: validation loss {best['val_loss']:.4f}, accuracy "
                  f"{100 * best['val_accuracy']:.2f}%, test accuracy {100 * best['test_accuracy']:.2f}%)")

    p.set_defaults(func=run)


@verb('classify')
def add_classify(sub):
    p = _parser(sub, "classify", "Classify texts with a fine-tuned classifier: label and probability.")
    p.add_argument("--model", required=True, help="classifier directory or `finetune classify` run directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeat for several); prints label<TAB>probability")
    src.add_argument("--input", default=None, help="file with one text per line; writes JSONL {text, label, probability}")
    p.add_argument("--out", default=None, help="write the JSONL here instead of stdout")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    def run(args):
        from scratchllm.inference.classify import classify_texts

        rows = classify_texts(args.model, texts=args.text, input=args.input, out=args.out, device=args.device,
                              batch_size=args.batch_size, overwrite=args.overwrite)
        if args.out:
            print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
        elif args.text:
            for r in rows:
                print(f"{r['label']}\t{r['probability']:.4f}")
        else:
            for r in rows:
                print(json.dumps(r, ensure_ascii=False))

    p.set_defaults(func=run)


def _add_tuning(recipes, name: str, help: str, config: str, module: str, function: str) -> None:
    """`finetune instruct` and `finetune dpo`: a config dataclass in, fit's summary (JSON) out."""
    import importlib

    import scratchllm.recipes.config as configs

    cls = getattr(configs, config)
    p = _parser(recipes, name, help)
    names = add_options(p, cls)

    def run(args):
        summary = getattr(importlib.import_module(module), function)(options_of(args, cls, names))
        print(json.dumps(summary))
        return summary["exit_code"]

    p.set_defaults(func=run)


@finetune_recipe
def add_finetune_instruct(recipes):
    _add_tuning(recipes, "instruct", "Instruction fine-tuning on {instruction, input, output} or {messages} records "
                "(full or LoRA).", "InstructConfig", "scratchllm.recipes.instruct", "finetune_instruct")


@finetune_recipe
def add_finetune_dpo(recipes):
    _add_tuning(recipes, "dpo", "Direct Preference Optimization on {instruction, input, chosen, rejected} records.",
                "DPOConfig", "scratchllm.recipes.dpo", "finetune_dpo")


# --------------------------------------------------------------------------------------------------
# chat and serving (scratchllm.chat, scratchllm.serve)


@verb('chat')
def add_chat(sub):
    p = _parser(sub, "chat", "Chat with a model in the terminal; answers stream as they are decoded (Ctrl-C stops one). "
                "With standard input piped in, each line is a message and only the answers are printed.")
    from scratchllm.inference.config import ChatConfig

    names = add_options(p, ChatConfig, exclude=("token_delay",))

    def run(args):
        from scratchllm.inference.chat import ChatSession, load_for_chat, token_delay_from_env
        from scratchllm.inference.generation import check_sampling

        cfg = options_of(args, ChatConfig, names, token_delay=token_delay_from_env())
        check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)
        net, tokenizer, style, name = load_for_chat(cfg.model, cfg.device, cfg.dtype, cfg.prompt_style)
        session = ChatSession(net, tokenizer, style, cfg)
        if not sys.stdin.isatty():
            return chat_piped(session, sys.stdin, sys.stdout)
        return chat_repl(session, name)

    p.set_defaults(func=run)


def chat_piped(session, stdin, out) -> int:
    """`scratchllm chat` driven by a script: each line of stdin is a user message (commands too),
    each answer is printed on one line (newlines inside it escaped as \\n), nothing else; notes and
    errors go to stderr. Returns 0 at end of input or /quit."""
    for line in stdin:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                result = session.handle(line)
                if result is None:
                    return 0
                print(f"[{result}]", file=sys.stderr)
                continue
            answer = "".join(session.send(line))
        except ScratchLLMError as exc:
            print(f"scratchllm chat: {exc}", file=sys.stderr)
            continue
        out.write(answer.replace("\\", "\\\\").replace("\n", "\\n") + "\n")
        out.flush()
    return 0


def chat_repl(session, name: str, stdin=None, out=None) -> int:
    """The terminal loop of `scratchllm chat` until /quit or end of input (Ctrl-D); returns the exit code.

    The answer streams as it is decoded. Ctrl-C during an answer stops it (the part shown is kept in
    the conversation); Ctrl-C at the prompt only prints a hint.
    """
    from scratchllm.inference.chat import ChatSession

    out = out or sys.stdout
    use_input = stdin is None and out is sys.stdout  # the terminal: input() gives line editing
    stdin = stdin or sys.stdin
    if use_input:
        try:
            import readline  # noqa: F401  (arrow keys and history for input())
        except ImportError:
            pass
        import signal
        import threading

        # A process started with SIGINT ignored (`nohup`, `cmd &` in a script) inherits that, and
        # Python then never raises KeyboardInterrupt: Ctrl-C could not stop an answer.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def read_line() -> str | None:
        if use_input:
            try:
                return input("you> ")
            except EOFError:
                return None
        out.write("you> ")
        out.flush()
        line = stdin.readline()
        return line.rstrip("\n") if line else None

    def note(text: str) -> None:
        out.write(f"[{text}]\n")
        out.flush()

    note(f"chatting with {name} (prompt style {session.style.name}, context {session.context_length} tokens); "
         f"commands: {ChatSession.COMMANDS}")
    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:
            out.write("\n")
            note("Ctrl-C stops an answer; type /quit or press Ctrl-D to leave")
            continue
        if line is None:  # end of input (Ctrl-D)
            out.write("\n")
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            try:
                result = session.handle(line)
            except ScratchLLMError as exc:
                note(str(exc))
                continue
            if result is None:
                return 0
            note(result)
            continue
        try:
            answer = session.send(line)
        except ScratchLLMError as exc:
            note(str(exc))
            continue
        if session.dropped:
            note(f"dropped the oldest {session.dropped} message(s) to fit the context of {session.context_length} tokens")
        out.write("bot> ")
        out.flush()
        pieces = iter(answer)
        try:
            for piece in pieces:
                out.write(piece)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            pieces.close()  # records the partial answer in the history
            out.write("\n")
            note(f"stopped after {answer.tokens} tokens")
        out.flush()


@verb('serve')
def add_serve(sub):
    p = _parser(sub, "serve", "Serve a model over an OpenAI-compatible HTTP API (with streaming) and a web chat page at /.")
    from scratchllm.inference.config import ServeConfig

    names = add_options(p, ServeConfig, exclude=("token_delay",))

    def run(args):
        from scratchllm.inference.chat import token_delay_from_env
        from scratchllm.inference.config import API_KEY_ENV
        from scratchllm.inference.serve import is_loopback, serve

        cfg = options_of(args, ServeConfig, names, token_delay=token_delay_from_env())
        if cfg.api_key is not None:
            print("scratchllm serve: warning: --api-key shows in the process list (ps) of this machine; prefer "
                  f"${API_KEY_ENV}", file=sys.stderr)
        cfg.api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
        cfg.check()
        if not is_loopback(cfg.host) and not cfg.api_key:
            print(f"scratchllm serve: warning: listening on {cfg.host} without an API key; anyone who can reach "
                  f"this port can use the model (set ${API_KEY_ENV})", file=sys.stderr)
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        print(f"scratchllm serve: chat page at http://{shown}:{cfg.port}/ ; OpenAI API at http://{shown}:{cfg.port}/v1",
              file=sys.stderr)
        return serve(cfg)

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# generation (scratchllm.generation)


@verb('generate')
def add_generate(sub):
    p = _parser(sub, "generate", "Continue a prompt with a model and print the prompt and its completion.")
    from scratchllm.inference.config import GenerateConfig

    names = add_options(p, GenerateConfig)

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.inference.generation import check_sampling, generate, optimize_for_decoding, stream

        cfg = options_of(args, GenerateConfig, names)
        top_k = cfg.top_k or None
        check_sampling(cfg.max_new_tokens, cfg.temperature, top_k, cfg.top_p, cfg.seed)
        gpt, tokenizer = load(cfg.model, device=cfg.device, dtype=cfg.dtype, kind="gpt")
        optimize_for_decoding(gpt)  # inference only: a faster weight layout for CPU decoding
        options = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=top_k, top_p=cfg.top_p,
                       seed=cfg.seed, stop=cfg.stop, use_cache=not cfg.no_cache)
        sys.stdout.write(cfg.prompt)
        sys.stdout.flush()
        if cfg.stream:
            for piece in stream(gpt, tokenizer, cfg.prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
        else:
            sys.stdout.write(generate(gpt, tokenizer, cfg.prompt, **options))
        sys.stdout.write("\n")
        sys.stdout.flush()

    p.set_defaults(func=run)


@verb('fill-mask')
def add_fill_mask(sub):
    p = _parser(sub, "fill-mask", "Print the most likely tokens for each [MASK] in a text (an encoder from pretrain --objective mlm).")
    p.add_argument("--model", required=True, help="model or run directory of a masked-language encoder")
    p.add_argument("--text", required=True, help='text with one or more [MASK] markers, e.g. "The [MASK] sat on the mat."')
    p.add_argument("--top-k", type=int, default=5, help="fillers to print per mask")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print [[{token, probability, text}, ...], ...] as JSON")

    def run(args):
        from dataclasses import asdict

        from scratchllm.checkpoint.loader import load
        from scratchllm.core.device import resolve_device
        from scratchllm.inference.fill_mask import fill_mask, format_fillers

        if not args.text.strip():
            raise ScratchLLMError("--text is empty; give a sentence with [MASK] in it")
        encoder, tokenizer = load(args.model, device=resolve_device(args.device), kind="encoder")
        results = fill_mask(encoder, tokenizer, args.text, args.top_k)
        if args.json:
            print(json.dumps([[asdict(f) for f in fillers] for fillers in results], ensure_ascii=False))
        else:
            print(format_fillers(results))

    p.set_defaults(func=run)


@verb('translate')
def add_translate(sub):
    p = _parser(sub, "translate", "Translate a text with an encoder-decoder (pretrain --objective seq2seq): greedy or beam search.")
    p.add_argument("--model", required=True, help="model or run directory of an encoder-decoder")
    p.add_argument("--text", required=True, help="source text")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="most target tokens (default: context_length - 1)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam ranking: log-probability / length ** this (0 = raw log-probability)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.core.device import resolve_device
        from scratchllm.inference.translate import translate

        if not args.text.strip():
            raise ScratchLLMError("--text is empty; give the source text to translate")
        net, tokenizer = load(args.model, device=resolve_device(args.device), kind="seq2seq")
        print(translate(net, tokenizer, args.text, args.beam, args.max_new_tokens, args.length_penalty))

    p.set_defaults(func=run)




def build_parser() -> argparse.ArgumentParser:
    from scratchllm import __version__

    parser = argparse.ArgumentParser(
        prog="scratchllm", usage="scratchllm [-h] [--version] VERB ...", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build, train, fine-tune, evaluate and serve GPT-style language models from scratch.",
        epilog="`scratchllm VERB --help` shows a verb's options.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", help=argparse.SUPPRESS)
    listed = [name for _, names in GROUPS for name in names]
    assert sorted(listed) == sorted(VERBS), "every verb belongs to one group"
    lines = []
    for group, names in GROUPS:
        lines.append(f"{group}:")
        for name in names:
            VERBS[name](sub)
            lines.append(f"  {name:<11} {sub.choices[name].description}")
    parser.description += "\n\nverbs, in the order of a model's life:\n" + "\n".join(lines)
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
    except BrokenPipeError:  # the reader of our stdout went away (e.g. `| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
