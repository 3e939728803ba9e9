"""The `scratchllm` command line: one verb per library function.

Each verb is a small `add_<verb>` function that declares its arguments and a `run` function that calls
the library; all the work lives in the library modules so notebooks and tests use the same path.
Bad input raises ScratchLLMError, printed here as one line on stderr with exit code 2. Results go to
stdout so they can be piped; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from scratchllm.errors import ScratchLLMError

VERBS: list[Callable[[argparse._SubParsersAction], None]] = []


def verb(add: Callable[[argparse._SubParsersAction], None]):
    """Register a verb's `add_*` function (verbs appear in `--help` in registration order)."""
    VERBS.append(add)
    return add


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in --help, except when there is none to show (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_DefaultsFormatter)


# --------------------------------------------------------------------------------------------------
# info


@verb
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


@verb
def add_tokenizer(sub):
    p = _parser(sub, "tokenizer", "Train a byte-level BPE tokenizer or encode text with one.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="learn a BPE vocabulary from text files", formatter_class=_DefaultsFormatter)
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files (one document each)")
    t.add_argument("--vocab-size", type=int, required=True, help="256 byte tokens + merges + special tokens")
    t.add_argument("--out", required=True, help="tokenizer JSON file to write")
    t.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"], help="special tokens appended to the vocabulary")
    e = actions.add_parser("encode", help="print the ids and pieces of a text", formatter_class=_DefaultsFormatter)
    e.add_argument("--tokenizer", default="gpt2", help="gpt2 or a tokenizer JSON file")
    e.add_argument("--text", required=True)
    e.add_argument("--json", action="store_true", help="print [[id, piece], ...] as JSON")

    def run(args):
        import time

        from scratchllm.tokenizer import Tokenizer, token_pieces, train_tokenizer

        if args.action == "train":
            start = time.perf_counter()
            tok = train_tokenizer(args.input, args.vocab_size, args.out, special_tokens=args.special_tokens)
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


@verb
def add_import_gpt2(sub):
    p = _parser(sub, "import-gpt2", "Convert GPT-2 weights (a name, downloaded once, or a Hugging Face GPT-2 directory) to a scratchllm model directory.")
    p.add_argument("--source", required=True, help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a Hugging Face GPT-2 directory")
    p.add_argument("--out", required=True, help="scratchllm model directory to write")
    p.add_argument("--dtype", default=None, help="cast the weights: float32, bfloat16 or float16 (default: as stored)")

    def run(args):
        from scratchllm.checkpoint.convert import import_hf

        print(import_hf(args.source, args.out, dtype=args.dtype))

    p.set_defaults(func=run)


@verb
def add_export_hf(sub):
    p = _parser(sub, "export-hf", "Write a scratchllm model as a Hugging Face GPT-2 directory (transformers' from_pretrained loads it).")
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


def print_report(report: dict, out: str | None) -> None:
    from scratchllm.evaluation.lm import format_report, write_report

    if out:
        write_report(report, out)
    print(format_report(report))


@verb
def add_evaluate(sub):
    p = _parser(sub, "evaluate", "Evaluate a model: perplexity, few-shot classification, multiple choice.")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    for add in EVALUATE_TASKS:
        add(tasks)

    def run(args):
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=run)


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

        print_report(evaluate_perplexity(
            args.model, args.data, context_length=args.context_length, stride=args.stride,
            batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device, dtype=args.dtype,
            progress=sys.stderr.isatty()), args.out)

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

    def run(args):
        from scratchllm.evaluation.lm import evaluate_fewshot

        labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
        template = args.template.replace("\\n", "\n").replace("\\t", "\t")
        print_report(evaluate_fewshot(
            args.model, args.data, args.shots, seed=args.seed, text_column=args.text_column,
            label_column=args.label_column, labels=labels, limit=args.limit, template=template,
            train_fraction=args.train_fraction, train_data=args.train_data, device=args.device,
            dtype=args.dtype, progress=sys.stderr.isatty()), args.out)

    p.set_defaults(func=run)


@evaluate_task
def add_evaluate_choice(tasks):
    p = _parser(tasks, "choice", "Multiple choice from JSONL (context, choices, label): acc and length-normalised acc_norm.")
    eval_model_args(p)
    p.add_argument("--data", required=True, help='JSONL, one task a line: {"context": str, "choices": [str, ...], "label": int}')
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks")

    def run(args):
        from scratchllm.evaluation.lm import evaluate_choice

        print_report(evaluate_choice(args.model, args.data, limit=args.limit, device=args.device, dtype=args.dtype,
                                     progress=sys.stderr.isatty()), args.out)

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# inspect: pictures of one forward pass


@verb
def add_inspect(sub):
    p = _parser(sub, "inspect", "Look inside: token boundaries, attention heat maps, next-token probabilities.")
    views = p.add_subparsers(dest="view", metavar="VIEW")

    a = _parser(views, "attention", "Attention weights of every layer/head for a text, as a grid of heat maps (PNG).")
    a.add_argument("--model", required=True, help="model directory, run directory or GPT-2 name")
    a.add_argument("--text", required=True, help="the text whose attention to draw")
    a.add_argument("--out", required=True, help="PNG file to write")
    a.add_argument("--layers", default="all", help="'all' or comma-separated layer indices, e.g. 0,1")
    a.add_argument("--heads", default="all", help="'all' or comma-separated head indices")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

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
    n.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

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


@verb
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

# Every TrainConfig field as a flag: (field, type, default, help). Spelled out so that building the
# parser never imports torch; tests/test_train.py checks this table against TrainConfig.
TRAIN_FLAGS = [
    ("max_steps", int, 1000, "optimizer steps"),
    ("max_time", float, None, "stop (and save) after this many seconds of wall time"),
    ("batch_size", int, 8, "sequences per micro-batch, per process"),
    ("context_length", int, None, "tokens per sequence (default: the model's)"),
    ("grad_accum", int, 1, "micro-batches per optimizer step"),
    ("tokens_per_step", int, None, "derive grad_accum from the tokens per optimizer step"),
    ("lr", float, 6e-4, "peak learning rate"),
    ("min_lr", float, 6e-5, "learning rate at the end of the cosine decay"),
    ("warmup_steps", int, 100, "linear warmup steps"),
    ("weight_decay", float, 0.1, "AdamW weight decay on 2-D weights"),
    ("beta1", float, 0.9, "AdamW beta1"),
    ("beta2", float, 0.95, "AdamW beta2"),
    ("grad_clip", float, 1.0, "max global gradient norm (0: off)"),
    ("fused_adamw", bool, True, "use the fused AdamW kernel where available"),
    ("schedule", str, "steps", "steps: warmup + cosine over max_steps; time: over max_time (a wall-clock budget)"),
    ("eval_every", int, 200, "evaluate every N steps (0: only at the end)"),
    ("eval_batches", int, 20, "validation batches per evaluation (0: the whole split)"),
    ("log_every", int, 10, "log every N steps"),
    ("save_every", int, 500, "checkpoint every N steps (0: only at the end)"),
    ("keep_last", int, 2, "step checkpoints to keep (best/ and final/ besides)"),
    ("sample_every", int, 0, "print a text sample every N steps (0: never)"),
    ("sample_prompt", str, "\n", "prompt of the samples"),
    ("sample_tokens", int, 64, "tokens per sample"),
    ("seed", int, 1337, "random seed"),
    ("device", str, "auto", "auto, cpu, cuda, cuda:N or mps"),
    ("dtype", str, "auto", "auto (bf16 autocast on CUDA), bfloat16 (autocast, also on CPU) or float32"),
    ("compile", bool, False, "torch.compile the loss computation"),
    ("fsdp", bool, False, "shard the model with FSDP2 (under torchrun)"),
    ("progress", bool, True, "tqdm progress bar on stderr"),
]


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """--max-steps ... for every TrainConfig field. A flag left out keeps the run file's (or the
    dataclass's) value, so argparse's default is 'not given' and the help shows the dataclass default."""
    for name, kind, default, helptext in TRAIN_FLAGS:
        flag = "--" + name.replace("_", "-")
        helptext = f"{helptext} (default: {default!r})"
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helptext)
        else:
            p.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=helptext)


def _train_flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name, *_ in TRAIN_FLAGS if hasattr(args, name)}


@verb
def add_pretrain(sub):
    p = _parser(sub, "pretrain", "Pretrain a GPT on a text file or prepared DATADIR (single process, or DDP/FSDP under torchrun).")
    p.add_argument("--data", default=None, help="a UTF-8 text file (split 90/10 in memory) or a DATADIR from `scratchllm prepare`")
    p.add_argument("--model", default=None, help="preset name or config.json (vocab_size comes from the tokenizer)")
    p.add_argument("--out", default=None, metavar="RUNDIR", help="run directory to write")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a tokenizer .json file or a model directory")
    p.add_argument("--config", default=None, metavar="RUN_FILE",
                   help="run.toml / .yaml / .json with train settings (and data, model, tokenizer, out); flags win")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of a text file")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUNDIR",
                   help="continue the newest checkpoint of --out (or of RUNDIR); omitted settings come from its run_config.json")
    p.add_argument("--objective", choices=["lm", "mlm", "seq2seq"], default=None,
                   help="lm: next-token GPT (default); mlm: BERT-style masked-language encoder; "
                        "seq2seq: encoder-decoder on a source<TAB>target --data file")
    add_train_flags(p)

    def run(args):
        from scratchllm.recipes.pretrain import pretrain

        summary = pretrain(args.data, args.model, args.out, tokenizer=args.tokenizer, resume=args.resume,
                           config_file=args.config, val_fraction=args.val_fraction, objective=args.objective,
                           **_train_flags(args))
        if summary["rank"] == 0:  # under torchrun, one summary
            print(json.dumps(summary))
        return summary["exit_code"]  # 0, or 130 / 143 after SIGINT / SIGTERM (a checkpoint was saved)

    p.set_defaults(func=run)


@verb
def add_demo(sub):
    p = _parser(sub, "demo", "The whole pipeline in minutes, no download: tokenizer, data, pretraining, samples, a model to generate from.")
    p.add_argument("--out", default="runs/demo", metavar="RUNDIR", help="run directory to write")
    p.add_argument("--data", default=None, metavar="FILE", help="your own UTF-8 text instead of Python's documentation")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=None, help="train this many steps instead of fitting the budget")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16 or float32")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks")
    p.add_argument("--emb-dim", type=int, default=256, help="model width")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--context-length", type=int, default=128, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--prompt", default="The", help="prompt of the before/after samples")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    def run(args):
        from scratchllm.recipes.demo import demo

        summary = demo(args.out, data=args.data, minutes=args.minutes, device=args.device, vocab_size=args.vocab_size,
                       n_layers=args.layers, emb_dim=args.emb_dim, n_heads=args.heads, context_length=args.context_length,
                       batch_size=args.batch_size, lr=args.lr, dtype=args.dtype, overwrite=args.overwrite,
                       max_steps=args.max_steps, prompt=args.prompt)
        print(json.dumps(summary))
        return summary["exit_code"]

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# instruction responses, LoRA merging, response evaluation (scratchllm.instruct, scratchllm.lora)


@verb
def add_respond(sub):
    p = _parser(sub, "respond", "Generate a response to each instruction record; save the records with a model_response field.")
    p.add_argument("--model", required=True, help="model or run directory (LoRA adapters are merged in) or GPT-2 name")
    p.add_argument("--data", required=True, help="JSON/JSONL records: {instruction, input, output} or {messages}, e.g. RUNDIR/test.json")
    p.add_argument("--out", required=True, help="responses JSON file to write")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest response in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--seed", type=int, default=123, help="sampling seed (temperature > 0)")
    p.add_argument("--prompt-style", default=None, help="alpaca, phi3 or plain (default: the one stored with the model, else alpaca)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, help="cast the weights: float32, bfloat16 or float16")

    def run(args):
        from scratchllm.evaluation.responses import respond

        records = respond(args.model, args.data, args.out, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, batch_size=args.batch_size,
                          seed=args.seed, prompt_style=args.prompt_style, device=args.device, dtype=args.dtype,
                          limit=args.limit, progress=sys.stderr.isatty())
        print(f"{len(records)} responses written to {args.out}")

    p.set_defaults(func=run)


@verb
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

    def run(args):
        import os

        from scratchllm.evaluation.responses import evaluate_responses, format_evaluation

        report = evaluate_responses(args.data, judge_url=args.judge_url, judge_model=args.judge_model, out=args.out,
                                    timeout=args.timeout, api_key=os.environ.get("OPENAI_API_KEY"),
                                    progress=sys.stderr.isatty())
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


@verb
def add_finetune(sub):
    p = _parser(sub, "finetune", "Fine-tune a pretrained model: classify (a classification head), and the other recipes below.")
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE")
    for add in FINETUNE_RECIPES:
        add(recipes)

    def run(args):
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=run)


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions like 0.7,0.1,0.2, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three fractions (train,validation,test), got {text!r}")
    return values


@finetune_recipe
def add_finetune_classify(recipes):
    p = _parser(recipes, "classify", "Turn a pretrained GPT into a text classifier (a head on the last real token's hidden state).")
    p.add_argument("--model", required=True, help="model directory, run directory or GPT-2 name to start from")
    p.add_argument("--data", default="sms-spam", help="labelled TSV/CSV/JSONL file, or sms-spam (the UCI SMS Spam Collection, downloaded once)")
    p.add_argument("--out", required=True, help="run directory to write (final/ holds the classifier)")
    p.add_argument("--text-column", default="text", help="text column: header name / JSON key, or 0-based position without a header")
    p.add_argument("--label-column", default="label", help="label column, as --text-column (a headerless 2-column file is label, text)")
    p.add_argument("--format", default=None, choices=["tsv", "csv", "jsonl", "json"], help="file format (default: from the file name)")
    header = p.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_true", default=None, help="the TSV/CSV file has a header row (default: detect)")
    header.add_argument("--no-header", dest="header", action="store_false", help="the TSV/CSV file has no header row")
    p.add_argument("--val", default=None, help="validation file (default: carved out of --data)")
    p.add_argument("--test", default=None, help="test file (default: carved out of --data)")
    p.add_argument("--split", type=_fractions, default=(0.7, 0.1, 0.2), help="train,validation,test fractions of --data (stratified, seeded)")
    p.add_argument("--balance", default="undersample", choices=["undersample", "weights", "none"], help="undersample every class to the smallest, or weight the loss by inverse class frequency")
    p.add_argument("--epochs", type=float, default=5.0, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=8, help="texts per step")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    p.add_argument("--min-lr", type=float, default=None, help="cosine-decay the lr to this (default: constant lr)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices")
    p.add_argument("--trainable", default="last-block", choices=["head", "last-block", "all", "lora"], help="what trains: the head; the last block + final norm + head; everything; LoRA adapters + head")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r (with --trainable lora)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (with --trainable lora)")
    p.add_argument("--pooling", default="last", choices=["last", "mean", "first"], help="which hidden state the head reads: the last real token, the mean of real tokens, or the first")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens (default: the model's context length)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate while fine-tuning (default: the model's)")
    p.add_argument("--seed", type=int, default=123, help="seed of balancing, split, head init and batch order")
    p.add_argument("--split-seed", type=int, default=None, help="seed of balancing and split only (default: --seed)")
    p.add_argument("--lm-weight", type=float, default=0.0, help="add this x the next-token loss of the texts (Radford et al. 2018's auxiliary objective)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype (auto: bf16 on CUDA)")
    p.add_argument("--max-time", type=float, default=None, help="stop cleanly after this many seconds")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")

    def run(args):
        from scratchllm.evaluation.metrics import format_classification
        from scratchllm.recipes.classify import finetune_classifier, format_history
        from scratchllm.recipes.config import ClassifyConfig

        fields = {k: v for k, v in vars(args).items() if k not in ("verb", "recipe", "func")}
        report = finetune_classifier(ClassifyConfig(**fields, progress=sys.stderr.isatty()))
        print(format_history(report["epochs"]))
        print()
        print(format_classification(report["test"], "test"))
        best = report["best"]
        if best is not None and best["epoch"] is not None:
            print(f"(best/ is epoch {best['epoch']:g}: validation accuracy {100 * best['val_accuracy']:.2f}%, "
                  f"test accuracy {100 * best['test_accuracy']:.2f}%)")

    p.set_defaults(func=run)


@verb
def add_classify(sub):
    p = _parser(sub, "classify", "Classify texts with a fine-tuned classifier: label and probability.")
    p.add_argument("--model", required=True, help="classifier directory or `finetune classify` run directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeat for several); prints label<TAB>probability")
    src.add_argument("--input", default=None, help="file with one text per line; writes JSONL {text, label, probability}")
    p.add_argument("--out", default=None, help="write the JSONL here instead of stdout")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")

    def run(args):
        from scratchllm.inference.classify import classify_texts

        rows = classify_texts(args.model, texts=args.text, input=args.input, out=args.out, device=args.device,
                              batch_size=args.batch_size)
        if args.out:
            print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
        elif args.text:
            for r in rows:
                print(f"{r['label']}\t{r['probability']:.4f}")
        else:
            for r in rows:
                print(json.dumps(r, ensure_ascii=False))

    p.set_defaults(func=run)


def _instruct_args(p: argparse.ArgumentParser, lr: float, epochs: int, weight_decay: float) -> None:
    """Flags shared by `finetune instruct` and `finetune dpo` (scratchllm.instruct)."""
    p.add_argument("--model", required=True, help="model directory, run directory or GPT-2 name to start from")
    p.add_argument("--out", required=True, help="run directory to write (final/, test.json for `respond`)")
    p.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank instead of all weights")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale alpha (the update is alpha/r * B A)")
    p.add_argument("--lora-targets", default="attn.qkv,attn.proj,mlp.fc,mlp.proj", help="comma-separated linear layers that get adapters")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input")
    p.add_argument("--epochs", type=int, default=epochs, help="passes over the training split")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps instead (default: epochs x batches per epoch)")
    p.add_argument("--batch-size", type=int, default=8, help="records per step")
    p.add_argument("--lr", type=float, default=lr, help="AdamW learning rate (constant after warmup, as in the book)")
    p.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay on matrices")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps")
    p.add_argument("--max-length", type=int, default=None, help="truncate examples to this many tokens (default: the model's context length)")
    p.add_argument("--val", default=None, help="validation file (default: 5%% of --data)")
    p.add_argument("--test", default=None, help="test file (default: 10%% of --data)")
    p.add_argument("--seed", type=int, default=123, help="seed of the split, adapters' init and batch order")
    p.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default: 4 times per epoch)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype (auto: bf16 on CUDA)")
    p.add_argument("--max-time", type=float, default=None, help="stop cleanly after this many seconds")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")


def _instruct_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {k: v for k, v in vars(args).items() if k not in ("verb", "recipe", "func")}
    kwargs["lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return kwargs


@finetune_recipe
def add_finetune_instruct(recipes):
    p = _parser(recipes, "instruct", "Instruction fine-tuning on {instruction, input, output} or {messages} records (full or LoRA).")
    p.add_argument("--data", required=True, help="JSON/JSONL instruction records (split 85/5/10, seeded, unless --val/--test)")
    p.add_argument("--prompt-style", default="alpaca", choices=["alpaca", "phi3", "plain"], help="prompt template; stored with the model")
    p.add_argument("--mask-prompt", action="store_true", help="learn the response only (prompt targets ignored)")
    _instruct_args(p, lr=5e-5, epochs=2, weight_decay=0.1)

    def run(args):
        from scratchllm.recipes.instruct import finetune_instruct

        summary = finetune_instruct(**_instruct_kwargs(args))
        print(json.dumps(summary))
        return summary["exit_code"]

    p.set_defaults(func=run)


@finetune_recipe
def add_finetune_dpo(recipes):
    p = _parser(recipes, "dpo", "Direct Preference Optimization on {instruction, input, chosen, rejected} records.")
    p.add_argument("--data", required=True, help="JSON/JSONL preference records (split 85/5/10, seeded, unless --val/--test)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta: how far the policy may move from the reference")
    p.add_argument("--prompt-style", default=None, choices=["alpaca", "phi3", "plain"], help="prompt template (default: the model's, else alpaca)")
    _instruct_args(p, lr=5e-6, epochs=1, weight_decay=0.01)

    def run(args):
        from scratchllm.recipes.dpo import finetune_dpo

        summary = finetune_dpo(**_instruct_kwargs(args))
        print(json.dumps(summary))
        return summary["exit_code"]

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# chat and serving (scratchllm.chat, scratchllm.serve)


@verb
def add_chat(sub):
    p = _parser(sub, "chat", "Chat with a model in the terminal; answers stream as they are decoded (Ctrl-C stops one).")
    p.add_argument("--model", required=True, help="model or run directory (LoRA adapters are merged in) or GPT-2 name")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy; /temperature X changes it")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt; /system TEXT changes it")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=None, help="seed the sampling for a reproducible conversation")
    p.add_argument("--prompt-style", default=None, help="alpaca, phi3 or plain (default: the one stored with the model, else plain)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, help="cast the weights: float32, bfloat16 or float16")

    def run(args):
        from scratchllm.inference.chat import ChatSession, ChatSettings, load_for_chat, token_delay_from_env
        from scratchllm.inference.generation import check_sampling

        check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
        settings = ChatSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed, system=args.system, token_delay=token_delay_from_env())
        net, tokenizer, style, name = load_for_chat(args.model, args.device, args.dtype, args.prompt_style)
        return chat_repl(ChatSession(net, tokenizer, style, settings), name)

    p.set_defaults(func=run)


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


@verb
def add_serve(sub):
    p = _parser(sub, "serve", "Serve a model over an OpenAI-compatible HTTP API (with streaming) and a web chat page at /.")
    p.add_argument("--model", required=True, help="model or run directory (LoRA adapters are merged in) or GPT-2 name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 serves the network: set an API key)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes (default: $SCRATCHLLM_API_KEY, else none)")
    p.add_argument("--max-tokens-cap", type=int, default=512, help="a request's max_tokens is lowered to this")
    p.add_argument("--queue-size", type=int, default=8, help="requests that may wait while one decodes; more get 503")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger request bodies get 413")
    p.add_argument("--prompt-style", default=None, help="alpaca, phi3 or plain (default: the one stored with the model, else plain)")
    p.add_argument("--model-name", default=None, help="model id in /v1/models (default: the directory's name)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, help="cast the weights: float32, bfloat16 or float16")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="uvicorn's log level")

    def run(args):
        from scratchllm.inference.chat import token_delay_from_env
        from scratchllm.inference.serve import API_KEY_ENV, ServeSettings, is_loopback, serve

        settings = ServeSettings(host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                                 max_tokens_cap=args.max_tokens_cap, queue_size=args.queue_size,
                                 max_body_bytes=args.max_body_bytes, prompt_style=args.prompt_style,
                                 model_name=args.model_name, token_delay=token_delay_from_env())
        settings.check()
        if not is_loopback(args.host) and not settings.api_key:
            print(f"scratchllm serve: warning: listening on {args.host} without an API key; anyone who can reach "
                  "this port can use the model (set --api-key or $SCRATCHLLM_API_KEY)", file=sys.stderr)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"scratchllm serve: chat page at http://{shown}:{args.port}/ ; OpenAI API at http://{shown}:{args.port}/v1",
              file=sys.stderr)
        return serve(args.model, settings, device=args.device, dtype=args.dtype, log_level=args.log_level)

    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# generation (scratchllm.generation)


@verb
def add_generate(sub):
    p = _parser(sub, "generate", "Continue a prompt with a model and print the prompt and its completion.")
    p.add_argument("--model", required=True, help="model or run directory, Hugging Face GPT-2 directory or GPT-2 name")
    p.add_argument("--prompt", default="", help="text to continue (empty: start from <|endoftext|>)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0 = no limit)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set with this much probability")
    p.add_argument("--seed", type=int, default=None, help="seed the sampling for a reproducible output")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop before this text (repeat for several)")
    p.add_argument("--stream", action="store_true", help="print the completion as it is decoded")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights (default: as stored)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole window every step (slow; for checking)")

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.inference.generation import check_sampling, generate, optimize_for_decoding, stream

        top_k = args.top_k or None
        check_sampling(args.max_new_tokens, args.temperature, top_k, args.top_p)
        gpt, tokenizer = load(args.model, device=args.device, dtype=args.dtype, kind="gpt")
        optimize_for_decoding(gpt)  # inference only: a faster weight layout for CPU decoding
        options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=top_k,
                       top_p=args.top_p, seed=args.seed, stop=args.stop, use_cache=not args.no_cache)
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        if args.stream:
            for piece in stream(gpt, tokenizer, args.prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
        else:
            sys.stdout.write(generate(gpt, tokenizer, args.prompt, **options))
        sys.stdout.write("\n")
        sys.stdout.flush()

    p.set_defaults(func=run)


@verb
def add_fill_mask(sub):
    p = _parser(sub, "fill-mask", "Print the most likely tokens for each [MASK] in a text (an encoder from pretrain --objective mlm).")
    p.add_argument("--model", required=True, help="model or run directory of a masked-language encoder")
    p.add_argument("--text", required=True, help='text with one or more [MASK] markers, e.g. "The [MASK] sat on the mat."')
    p.add_argument("--top-k", type=int, default=5, help="fillers to print per mask")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print [[{token, probability, text}, ...], ...] as JSON")

    def run(args):
        from dataclasses import asdict

        from scratchllm.checkpoint.loader import load
        from scratchllm.inference.fill_mask import fill_mask, format_fillers

        if not args.text.strip():
            raise ScratchLLMError("--text is empty; give a sentence with [MASK] in it")
        encoder, tokenizer = load(args.model, device=args.device, kind="encoder")
        results = fill_mask(encoder, tokenizer, args.text, args.top_k)
        if args.json:
            print(json.dumps([[asdict(f) for f in fillers] for fillers in results], ensure_ascii=False))
        else:
            print(format_fillers(results))

    p.set_defaults(func=run)


@verb
def add_translate(sub):
    p = _parser(sub, "translate", "Translate a text with an encoder-decoder (pretrain --objective seq2seq): greedy or beam search.")
    p.add_argument("--model", required=True, help="model or run directory of an encoder-decoder")
    p.add_argument("--text", required=True, help="source text")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="most target tokens (default: context_length - 1)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam ranking: log-probability / length ** this (0 = raw log-probability)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.inference.translate import translate

        if not args.text.strip():
            raise ScratchLLMError("--text is empty; give the source text to translate")
        net, tokenizer = load(args.model, device=args.device, kind="seq2seq")
        print(translate(net, tokenizer, args.text, args.beam, args.max_new_tokens, args.length_penalty))

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
    except BrokenPipeError:  # the reader of our stdout went away (e.g. `| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
