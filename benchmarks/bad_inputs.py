"""Fault probe of the command line: bad inputs a hostile-but-fair user tries, each of which must end
in one line on stderr and exit code 2 (or, for valid values at the edge of their range, succeed).

Run from the repository root:  python -m benchmarks.bad_inputs

The cases include hostile Hugging Face model directories (issue 28: config.json and tokenizer files of
the wrong types or nested 100,000 deep, a backtracking regex, a chat template that loops or does not
compile, a padded vocabulary, an API key no client can send); `python -m benchmarks.hostile_dirs`
sweeps every field of such a directory and hostile templates, with time and memory bounds.

Each case runs `scratchllm.cli.main(argv)` in this process (argparse's own usage errors, exit 2,
count as clean too). A traceback, another exit code, more than one line of error, a file or folder
changed that should not have been, or a valid edge value refused, is a failure. Reported: cases
tried, clean errors, successes on valid edge values, failures (each named); exit 1 on any failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "v0_1_layout"
DATA = REPO.parent / "shared" / "data"


def hostile_hf_cases(tmp: Path) -> list[tuple[str, list[str], int]]:
    """Issue 28's cases: a small padded Qwen2 Hugging Face directory (tests/hostile.py) with one file edited."""
    sys.path.insert(0, str(REPO))
    from tests.hf_tokenizers import build
    from tests.hostile import nested, padded_hf_dir

    base = padded_hf_dir(build("qwen2", tmp / "tok-qwen2"), tmp / "hf", "qwen2")
    dirs = 0

    def variant(name: str, edit=None, text: str | None = None) -> str:
        nonlocal dirs
        dirs += 1
        d = tmp / f"hf-{dirs}"
        shutil.copytree(base, d)
        if edit is not None:
            data = json.loads((d / name).read_text(encoding="utf-8")) if (d / name).is_file() else {}
            edit(data)
            text = json.dumps(data)
        (d / name).write_text(text or "", encoding="utf-8")
        return str(d)

    def split(pattern):
        return {"type": "Split", "pattern": pattern, "behavior": "Isolated", "invert": False}

    def gen(d: str, prompt: str = "hi", *more: str) -> list[str]:
        return ["generate", "--model", d, "--prompt", prompt, "--max-new-tokens", "4", *more]

    backtracking = variant("tokenizer.json", lambda t: t["pre_tokenizer"]["pretokenizers"].insert(0, split({"Regex": "(a|aa)+$"})))
    looping = variant("chat_template.jinja", text="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    cases = [
        ("hf: config tie_word_embeddings 'false'", gen(variant("config.json", lambda c: c.update(tie_word_embeddings="false"))), 2),
        ("hf: config model_type ['llama']", gen(variant("config.json", lambda c: c.update(model_type=["llama"]))), 2),
        ("hf: config layer_types 5", gen(variant("config.json", lambda c: c.update(layer_types=5))), 2),
        ("hf: config layer_types [{'a': 1}]", gen(variant("config.json", lambda c: c.update(layer_types=[{"a": 1}]))), 2),
        *[(f"hf: {name} nested 100,000 deep", gen(variant(name, text=nested())), 2)
          for name in ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json")],
        ("hf: tokenizer normalizers 5", gen(variant("tokenizer.json", lambda t: t.update(
            normalizer={"type": "Sequence", "normalizers": 5}))), 2),
        ("hf: tokenizer pretokenizers 5", gen(variant("tokenizer.json", lambda t: t["pre_tokenizer"].update(pretokenizers=5))), 2),
        ("hf: tokenizer Split pattern a bare string", gen(variant("tokenizer.json", lambda t: t["pre_tokenizer"][
            "pretokenizers"].insert(0, split("\\s+")))), 2),
        ("hf: tokenizer TemplateProcessing single [5]", gen(variant("tokenizer.json", lambda t: t.update(post_processor={
            "type": "TemplateProcessing", "single": [5], "special_tokens": {}}))), 2),
        ("hf: tokenizer TemplateProcessing special_tokens [1]", gen(variant("tokenizer.json", lambda t: t.update(
            post_processor={"type": "TemplateProcessing", "single": [], "special_tokens": [1]}))), 2),
        ("hf: tokenizer decoders 5", gen(variant("tokenizer.json", lambda t: t.update(decoder={"type": "Sequence", "decoders": 5}))), 2),
        ("hf: chat_template list with a list name", gen(variant("tokenizer_config.json", lambda c: c.update(
            chat_template=[{"name": ["default"], "template": "x"}]))), 2),
        ("hf: backtracking Split regex on 42 a's", gen(backtracking, "a" * 42 + "!"), 2),
        ("hf: backtracking Split regex on plain text (valid)", gen(backtracking, "hello"), 0),
        ("hf: chat template that does not compile, chat", ["chat", "--model", variant("chat_template.jinja", text="{% for %}")], 2),
        ("hf: chat template that loops, generate (valid: never runs it)", gen(looping, "hello"), 0),
        ("hf: chat template that loops, serve (refused at start)", ["serve", "--model", looping, "--port", "0"], 2),
        ("hf: padded vocabulary, sampled (valid)", gen(str(base), "Hello", "--temperature", "1.0", "--seed", "5"), 0),
        ("hf: padded vocabulary, greedy (valid)", gen(str(base), "Hello", "--temperature", "0"), 0),
    ]
    return cases


def make_cases(tmp: Path) -> list[tuple[str, list[str], int]]:
    """(name, argv, expected exit code) for every case; files they need are written under tmp."""
    import torch

    from scratchllm.checkpoint import load, save_model

    def edited(name: str, **fields) -> str:
        d = tmp / name
        shutil.copytree(FIXTURES / "gpt", d)
        config = json.loads((d / "config.json").read_text())
        config["model"].update(fields)
        (d / "config.json").write_text(json.dumps(config))
        return str(d)

    def write(name: str, content: str | bytes) -> str:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    model, tok = load(FIXTURES / "gpt")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    nan_dir = str(save_model(model, tmp / "nan", tok))
    truncated = tmp / "truncated"
    shutil.copytree(FIXTURES / "gpt", truncated)
    blob = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    notes = tmp / "P"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    classifier = tmp / "classifier"
    shutil.copytree(FIXTURES / "classifier", classifier)
    empty = tmp / "empty"
    empty.mkdir()
    tok_out = write("tok-existing.json", "keep")
    gpt, verdict, shake = str(FIXTURES / "gpt"), str(DATA / "the-verdict.txt"), str(FIXTURES / "shakespeare-60k.txt")
    tokfile = str(FIXTURES / "tok.json")
    gen = ["generate", "--model", gpt, "--prompt", "KING", "--max-new-tokens", "4"]
    pre = ["pretrain", "--data", verdict, "--tokenizer", tokfile, "--out", str(tmp / "run"), "--max-steps", "1", "--device", "cpu"]
    return [
        # resume, run directories, sizes (issue items 1, 6, 9)
        ("pretrain --resume on an empty folder", ["pretrain", "--resume", str(empty)], 2),
        ("pretrain --resume on a missing folder", ["pretrain", "--resume", str(tmp / "nope")], 2),
        ("pretrain a model of emb_dim 2^22", [*pre, "--model", write("huge.json", '{"emb_dim": 4194304, "n_layers": 2, "n_heads": 4}')], 2),
        ("pretrain n_layers 10^9", [*pre, "--model", write("deep.json", '{"n_layers": 1000000000}')], 2),
        ("pretrain n_kv_heads '2'", [*pre, "--model", write("kv.json", '{"emb_dim": 64, "n_heads": 4, "n_layers": 1, "n_kv_heads": "2"}')], 2),
        ("pretrain layer_norm_eps 'x'", [*pre, "--model", write("eps.json", '{"emb_dim": 64, "n_heads": 4, "n_layers": 1, "layer_norm_eps": "x"}')], 2),
        ("pretrain a config that is a list", [*pre, "--model", write("list.json", "[1, 2]")], 2),
        ("pretrain a model config that is not JSON", [*pre, "--model", write("bad.json", "{oops")], 2),
        ("pretrain --data missing", ["pretrain", "--data", str(tmp / "missing.txt"), "--model", "gpt-tiny", "--out", str(tmp / "r2")], 2),
        ("pretrain --data binary", ["pretrain", "--data", write("bin.txt", b"\xff\xfe\x00" * 100), "--model", "gpt-tiny", "--tokenizer", tokfile, "--out", str(tmp / "r3")], 2),
        ("pretrain --config unknown key", ["pretrain", "--config", write("run.toml", "max_stepz = 3\n"), "--out", str(tmp / "r4")], 2),
        ("pretrain --config not TOML", ["pretrain", "--config", write("run2.toml", "max_steps = = 3\n"), "--out", str(tmp / "r5")], 2),
        ("pretrain --lr -1", [*pre, "--model", "gpt-tiny", "--lr", "-1"], 2),
        ("pretrain --tokenizer missing", ["pretrain", "--data", verdict, "--model", "gpt-tiny", "--tokenizer", str(tmp / "t.json"), "--out", str(tmp / "r6")], 2),
        # model directories (issue item 6)
        ("generate: config.json says 10^9 layers", ["generate", "--model", edited("deep", n_layers=1_000_000_000), "--prompt", "hi"], 2),
        ("generate: config.json says 20,000 layers", ["generate", "--model", edited("lying", n_layers=20_000), "--prompt", "hi"], 2),
        ("generate: n_kv_heads '2' in config.json", ["generate", "--model", edited("kvdir", n_kv_heads="2"), "--prompt", "hi"], 2),
        ("generate: layer_norm_eps 'x' in config.json", ["generate", "--model", edited("epsdir", layer_norm_eps="x"), "--prompt", "hi"], 2),
        ("generate: NaN weights, sampled", ["generate", "--model", nan_dir, "--prompt", "hi", "--temperature", "0.8"], 2),
        ("generate: NaN weights, greedy", ["generate", "--model", nan_dir, "--prompt", "hi", "--temperature", "0"], 2),
        ("generate: truncated weights", ["generate", "--model", str(truncated), "--prompt", "hi"], 2),
        ("generate: missing model", ["generate", "--model", str(tmp / "nomodel"), "--prompt", "hi"], 2),
        ("generate: a random file as the model", ["generate", "--model", write("random.bin", b"\x00\x01" * 400), "--prompt", "hi"], 2),
        # sampling values (issue item 5)
        ("generate --seed 2^64", [*gen, "--seed", str(2**64)], 2),
        ("generate --seed -2^63-1", [*gen, "--seed", str(-(2**63) - 1)], 2),
        ("generate --temperature -1", [*gen, "--temperature", "-1"], 2),
        ("generate --temperature nan", [*gen, "--temperature", "nan"], 2),
        ("generate --top-p 0", [*gen, "--top-p", "0"], 2),
        ("generate --top-p 1.5", [*gen, "--top-p", "1.5"], 2),
        ("generate --max-new-tokens -1", [*gen, "--max-new-tokens", "-1"], 2),
        ("generate --temperature 1e-39 (valid)", [*gen, "--temperature", "1e-39"], 0),
        ("generate --temperature 1e-50 (valid)", [*gen, "--temperature", "1e-50"], 0),
        ("generate --top-p 1e-46 (valid)", [*gen, "--top-p", "1e-46", "--seed", "3"], 0),
        ("generate --seed 2^64-1 (valid)", [*gen, "--seed", str(2**64 - 1)], 0),
        # outputs that must not replace what is there (items 2, 3, 9)
        ("prepare --overwrite onto a folder of notes", ["prepare", "--input", verdict, "--tokenizer", tokfile, "--out", str(notes), "--overwrite"], 2),
        ("merge-lora --out onto a classifier", ["merge-lora", "--model", str(FIXTURES / "lora-step"), "--out", str(classifier)], 2),
        ("tokenizer train --out an existing file", ["tokenizer", "train", "--input", shake, "--vocab-size", "300", "--out", tok_out], 2),
        ("import-gpt2 --source garbage.bin", ["import-gpt2", "--source", write("garbage.bin", b"\x13" * 999), "--out", str(tmp / "imp")], 2),
        ("export-hf of an encoder-decoder", ["export-hf", "--model", str(FIXTURES / "seq2seq"), "--out", str(tmp / "hf")], 2),
        # other verbs
        ("classify with a GPT", ["classify", "--model", gpt, "--text", "hi"], 2),
        ("translate with a GPT", ["translate", "--model", gpt, "--text", "hi"], 2),
        ("fill-mask with a GPT", ["fill-mask", "--model", gpt, "--text", "a [MASK] b"], 2),
        ("respond --data not JSON", ["respond", "--model", gpt, "--data", write("r.json", "{not json"), "--out", str(tmp / "resp.json")], 2),
        ("evaluate perplexity --data missing", ["evaluate", "perplexity", "--model", gpt, "--data", str(tmp / "m.txt")], 2),
        ("info --model bad preset", ["info", "--model", "gpt5"], 2),
        ("serve --queue-size -1", ["serve", "--model", gpt, "--queue-size", "-1"], 2),
        ("serve --header-timeout-s 0", ["serve", "--model", gpt, "--header-timeout-s", "0"], 2),
        ("serve --api-key with a non-ASCII character", ["serve", "--model", gpt, "--api-key", "clé"], 2),
        ("serve --api-key with a newline inside", ["serve", "--model", gpt, "--api-key", "ab\ncd"], 2),
        ("serve --template-timeout-s 0", ["serve", "--model", gpt, "--template-timeout-s", "0"], 2),
        ("chat --template-memory-mb 1", ["chat", "--model", gpt, "--template-memory-mb", "1"], 2),
        *hostile_hf_cases(tmp),
    ]


def run_case(argv: list[str]) -> tuple[int | str, str]:
    from scratchllm.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 (a traceback is what this probe looks for)
            return f"{type(exc).__name__}: {exc}"[:200], err.getvalue()
    return code, err.getvalue()


def main() -> int:
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = make_cases(tmp)
        protected = {p: p.read_bytes() for p in [tmp / "P" / "a.txt", tmp / "tok-existing.json",
                                                 *sorted((tmp / "classifier").iterdir())]}
        clean = succeeded = 0
        failures = []
        for name, argv, expected in cases:
            code, err = run_case(argv)
            lines = [line for line in err.splitlines() if line.strip()]
            if expected == 0:
                ok = code == 0
                succeeded += ok
            else:
                usage = bool(lines) and lines[0].startswith("usage:")  # argparse: usage, then one error line
                ok = code == 2 and (len(lines) == 1 or usage) and "Traceback" not in err
                clean += ok
            if not ok:
                failures.append(f"{name}: exit {code}, stderr {err.strip()[-300:]!r}")
        changed = [str(p.relative_to(tmp)) for p, blob in protected.items() if not p.is_file() or p.read_bytes() != blob]
        failures += [f"changed: {c}" for c in changed]
    bad = sum(expected != 0 for _, _, expected in cases)
    print(f"bad inputs tried: {bad}; clean one-line errors (exit 2): {clean}; valid edge values tried: "
          f"{len(cases) - bad}, answered: {succeeded}; files that must not change: {len(protected)}, changed: {len(changed)}")
    for failure in failures:
        print("FAIL:", failure)
    print("FAIL" if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
