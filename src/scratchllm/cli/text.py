"""Verbs for text and data: `tokenizer` (train a byte-level BPE, look at what a tokenizer does) and
`prepare` (token shards for pretraining). Their flags come from data/config.py."""

from __future__ import annotations

import json

from scratchllm.cli.base import add_config, parser_for, verb


# tokenizer: train a byte-level BPE, look at what a tokenizer does


@verb('tokenizer')
def add_tokenizer(sub):
    p = parser_for(sub, "tokenizer", "Train a byte-level BPE tokenizer or encode text with one.")
    from scratchllm.data.config import TokenizerEncodeConfig, TokenizerTrainConfig

    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = add_config(parser_for(actions, "train", "learn a BPE vocabulary from text files"), TokenizerTrainConfig,
                       plain=True)
    encode = add_config(parser_for(actions, "encode", "print the ids and pieces of a text"), TokenizerEncodeConfig,
                        plain=True)

    def run(args):
        import time

        from scratchllm.tokenizer import Tokenizer, token_pieces, train_tokenizer

        if args.action == "train":
            cfg = train.config(args)
            start = time.perf_counter()
            tok = train_tokenizer(cfg.input, cfg.vocab_size, cfg.out, special_tokens=cfg.special_tokens,
                                  overwrite=cfg.overwrite)
            print(f"trained {tok.vocab_size} tokens in {time.perf_counter() - start:.1f} s -> {cfg.out}")
            return
        cfg = encode.config(args)
        pairs = token_pieces(Tokenizer.from_spec(cfg.tokenizer), cfg.text)
        if cfg.json:
            print(json.dumps(pairs, ensure_ascii=False))
            return
        print(" ".join(str(i) for i, _ in pairs))
        print(" ".join(repr(piece) for _, piece in pairs))
        print(f"{len(pairs)} tokens, {len(cfg.text.encode('utf-8'))} bytes")

    p.set_defaults(func=run)


@verb('prepare')
def add_prepare(sub):
    p = parser_for(sub, "prepare", "Tokenize text files, directories or JSONL into a DATADIR of token shards for pretraining.")
    from scratchllm.data.config import PrepareConfig

    flags = add_config(p, PrepareConfig, plain=True)

    def run(args):
        import dataclasses
        import time

        from scratchllm.data.prepare import prepare, summary_line

        cfg = flags.config(args)
        start = time.perf_counter()
        options = dataclasses.asdict(cfg)
        meta = prepare(options.pop("input"), options.pop("tokenizer"), options.pop("out"), **options)
        print(summary_line(meta, cfg.out, time.perf_counter() - start))

    p.set_defaults(func=run)
