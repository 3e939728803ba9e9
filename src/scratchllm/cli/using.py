"""Verbs that use a model: `generate`, `serve`, `classify`, `fill-mask`, `translate` and `respond`
(`chat` has its own module: its terminal loop)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from scratchllm.cli.base import add_options, options_of, parser_for, verb
from scratchllm.errors import ScratchLLMError


@verb('respond')
def add_respond(sub):
    p = parser_for(sub, "respond", "Generate a response to each instruction record; save the records with a model_response field.")
    from scratchllm.inference.config import RespondConfig

    names = add_options(p, RespondConfig)

    def run(args):
        from scratchllm.evaluation.responses import respond

        cfg = options_of(args, RespondConfig, names)
        records = respond(**dataclasses.asdict(cfg), progress=sys.stderr.isatty())
        print(f"{len(records)} responses written to {args.out}")

    p.set_defaults(func=run)




@verb('classify')
def add_classify(sub):
    p = parser_for(sub, "classify", "Classify texts with a fine-tuned classifier: label and probability.")
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




@verb('serve')
def add_serve(sub):
    p = parser_for(sub, "serve", "Serve a model over an OpenAI-compatible HTTP API (with streaming) and a web chat page at /.")
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


# generation (inference/generation.py), masked and seq2seq models


@verb('generate')
def add_generate(sub):
    p = parser_for(sub, "generate", "Continue a prompt with a model and print the prompt and its completion.")
    from scratchllm.inference.config import GenerateConfig

    names = add_options(p, GenerateConfig)

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.inference.decode_kernels import optimize_for_decoding
        from scratchllm.inference.generation import check_sampling, generate, stream

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
    p = parser_for(sub, "fill-mask", "Print the most likely tokens for each [MASK] in a text (an encoder from pretrain --objective mlm).")
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
    p = parser_for(sub, "translate", "Translate a text with an encoder-decoder (pretrain --objective seq2seq): greedy or beam search.")
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
