"""Verbs that use a model: `generate`, `serve`, `classify`, `fill-mask`, `translate` and `respond`
(`chat` has its own module: its terminal loop). Their flags come from inference/config.py."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from scratchllm.cli.base import add_config, parser_for, verb


@verb('respond')
def add_respond(sub):
    p = parser_for(sub, "respond", "Generate a response to each instruction record; save the records with a model_response field.")
    from scratchllm.inference.config import RespondConfig

    flags = add_config(p, RespondConfig)

    def run(args):
        from scratchllm.evaluation.responses import respond

        cfg = flags.config(args)
        records = respond(cfg.load.model, cfg.data, cfg.out, cfg.sampling, batch_size=cfg.batch_size,
                          prompt_style=cfg.prompt_style, device=cfg.load.device, dtype=cfg.load.dtype,
                          quantize=cfg.load.quantize, limit=cfg.limit, progress=sys.stderr.isatty(),
                          overwrite=cfg.overwrite)
        print(f"{len(records)} responses written to {cfg.out}")

    p.set_defaults(func=run)


@verb('classify')
def add_classify(sub):
    p = parser_for(sub, "classify", "Classify texts with a fine-tuned classifier: label and probability.")
    from scratchllm.inference.config import ClassifyTextsConfig

    flags = add_config(p, ClassifyTextsConfig, plain=True)

    def run(args):
        from scratchllm.inference.classify import classify_texts

        cfg = flags.config(args)
        rows = classify_texts(cfg.load.model, texts=cfg.text, input=cfg.input, out=cfg.out, device=cfg.load.device,
                              batch_size=cfg.batch_size, overwrite=cfg.overwrite)
        if cfg.out:
            print(f"wrote {len(rows)} predictions to {cfg.out}", file=sys.stderr)
        elif cfg.text:
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

    flags = add_config(p, ServeConfig, exclude=("token_delay",))

    def run(args):
        from scratchllm.inference.chat import token_delay_from_env
        from scratchllm.inference.config import API_KEY_ENV
        from scratchllm.inference.serve import is_loopback, serve

        cfg = flags.config(args, token_delay=token_delay_from_env())
        settings = cfg.settings
        from_flag = settings.api_key is not None
        settings.api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
        settings.check()  # a bad setting is one line, before any warning
        if from_flag:
            print("scratchllm serve: warning: --api-key shows in the process list (ps) of this machine; prefer "
                  f"${API_KEY_ENV}", file=sys.stderr)
        if not is_loopback(settings.host) and not settings.api_key:
            print(f"scratchllm serve: warning: listening on {settings.host} without an API key; anyone who can reach "
                  f"this port can use the model (set ${API_KEY_ENV})", file=sys.stderr)
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host

        def announce() -> None:  # once the model is loaded: a model that fails to load is one line
            print(f"scratchllm serve: chat page at http://{shown}:{settings.port}/ ; OpenAI API at "
                  f"http://{shown}:{settings.port}/v1", file=sys.stderr)

        return serve(cfg, announce)

    p.set_defaults(func=run)


# generation (inference/generation.py), masked and seq2seq models


@verb('generate')
def add_generate(sub):
    p = parser_for(sub, "generate", "Continue a prompt with a model and print the prompt and its completion.")
    from scratchllm.inference.config import GenerateConfig

    flags = add_config(p, GenerateConfig)

    def run(args):
        from scratchllm.inference.session import load_session

        cfg = flags.config(args)
        session = load_session(cfg.load.model, cfg.load.device, cfg.load.dtype, sampling=cfg.sampling,
                               quantize=cfg.load.quantize)  # with the fastest CPU decode kernels (load does it)
        sys.stdout.write(cfg.prompt)
        sys.stdout.flush()
        if cfg.stream:
            for piece in session.stream(cfg.prompt, stop=cfg.stop, use_cache=not cfg.no_cache):
                sys.stdout.write(piece)
                sys.stdout.flush()
        else:
            sys.stdout.write(session.generate(cfg.prompt, stop=cfg.stop, use_cache=not cfg.no_cache))
        sys.stdout.write("\n")
        sys.stdout.flush()

    p.set_defaults(func=run)


@verb('fill-mask')
def add_fill_mask(sub):
    p = parser_for(sub, "fill-mask", "Print the most likely tokens for each [MASK] in a text (an encoder from pretrain --objective mlm).")
    from scratchllm.inference.config import FillMaskConfig

    flags = add_config(p, FillMaskConfig, plain=True)

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.core.device import resolve_device
        from scratchllm.inference.fill_mask import fill_mask, format_fillers

        cfg = flags.config(args)
        encoder, tokenizer = load(cfg.load.model, device=resolve_device(cfg.load.device), kind="encoder")
        results = fill_mask(encoder, tokenizer, cfg.text, cfg.top_k)
        if cfg.json:
            print(json.dumps([[dataclasses.asdict(f) for f in fillers] for fillers in results], ensure_ascii=False))
        else:
            print(format_fillers(results))

    p.set_defaults(func=run)


@verb('translate')
def add_translate(sub):
    p = parser_for(sub, "translate", "Translate a text with an encoder-decoder (pretrain --objective seq2seq): greedy or beam search.")
    from scratchllm.inference.config import TranslateConfig

    flags = add_config(p, TranslateConfig, plain=True)

    def run(args):
        from scratchllm.checkpoint.loader import load
        from scratchllm.core.device import resolve_device
        from scratchllm.inference.translate import translate

        cfg = flags.config(args)
        net, tokenizer = load(cfg.load.model, device=resolve_device(cfg.load.device), kind="seq2seq")
        print(translate(net, tokenizer, cfg.text, cfg.beam, cfg.max_new_tokens, cfg.length_penalty))

    p.set_defaults(func=run)
