"""Verbs for text and data: `tokenizer` (train a byte-level BPE, look at what a tokenizer does) and
`prepare` (token shards for pretraining)."""

from __future__ import annotations

import json

from scratchllm.cli.base import DefaultsFormatter, parser_for, verb


# tokenizer: train a byte-level BPE, look at what a tokenizer does


@verb('tokenizer')
def add_tokenizer(sub):
    p = parser_for(sub, "tokenizer", "Train a byte-level BPE tokenizer or encode text with one.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="learn a BPE vocabulary from text files", formatter_class=DefaultsFormatter)
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files (one document each)")
    t.add_argument("--vocab-size", type=int, required=True, help="256 byte tokens + merges + special tokens")
    t.add_argument("--out", required=True, help="tokenizer JSON file to write")
    t.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"], help="special tokens appended to the vocabulary")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e = actions.add_parser("encode", help="print the ids and pieces of a text", formatter_class=DefaultsFormatter)
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




@verb('prepare')
def add_prepare(sub):
    p = parser_for(sub, "prepare", "Tokenize text files, directories or JSONL into a DATADIR of token shards for pretraining.")
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
