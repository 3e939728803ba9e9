"""Sweep of hostile Hugging Face model directories (issue 28): every value of a small Qwen2 directory's
JSON files replaced by values of the wrong type, and hostile chat templates, each through the command
line as a user would meet it. A safety probe, not a speed figure: it may run on a busy machine.

Run from the repository root:  python -m benchmarks.hostile_dirs [--quick]

1. Files: each mutation of config.json, generation_config.json, tokenizer.json and tokenizer_config.json
   (tests/hostile.py: 14 wrong values and removal at every path, the first 3 entries of long lists; and
   each file nested 100,000 deep) runs `scratchllm generate --model DIR --prompt ... --max-new-tokens 2`.
   Clean: exit 0, or exit 2 with one line on stderr and no traceback. The tokenizer files' mutations also
   load, encode, decode and render the template on both tokenizer backends (library calls: a result or
   a one-line ScratchLLMError).
2. Templates: each hostile template, as chat_template.jinja, runs `scratchllm chat --model DIR` with one
   line piped in. Clean: refused at start (exit 2, one line), or exit 0 with the answer or one error
   line. Each case's wall time is reported against the bound (the 2 s limit plus loading), the template
   process's peak address space and resident memory (/proc, sampled every 10 ms) against its 256 MB
   limit, and the growth of this process's own peak RSS over the templates.
3. A backtracking Split regex and a padded vocabulary, through `generate`.
Reported: cases tried, clean, slowest case, peak memory; FAIL lines; exit 1 on any failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]

# (name, chat_template.jinja): loops, allocations, writing without end, escapes, bad syntax, refusals
TEMPLATES = [
    ("nested loops of 10^10", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
    ("loops that write nothing", "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}"),
    ("'x' * 10**9", "{{ 'x' * 10**9 }}"),
    ("a list times 10^5", "{% for m in messages * 100000 %}{{ m.role }}{% endfor %}"),
    ("center(10**9)", "{{ 'x'|center(10**9) }}"),
    ("'%0999999999d' % 1", "{{ '%0999999999d' % 1 }}"),
    ("format width 10^9", "{{ '{:>999999999}'.format(1) }}"),
    ("nested format width", "{{ '{0:{1}}'.format('x', 10**9) }}"),
    ("tojson indent 10^9", "{{ messages|tojson(indent=10**9) }}"),
    ("range(10**9)", "{% for i in range(10**9) %}{% endfor %}"),
    ("2 ** 10**9", "{{ 2 ** (10 ** 9) }}"),
    ("(10**1000) ** 1000", "{{ (10 ** 1000) ** 1000 }}"),
    ("a macro calling itself", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
    ("a string doubled 40 times", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                                  "{% endfor %}{{ ns.s|length }}"),
    ("a list doubled 40 times", "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}"
                                "{% endfor %}{{ ns.l|length }}"),
    ("10^5 lines of 100", "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"),
    ("lipsum(10**6)", "{{ lipsum(10**6) }}"),
    ("a 5 MB template", "x" * 5_000_000),
    ("5,000 nested parentheses", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"),
    ("raise_exception", "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"),
    ("a syntax error", "{% for m in messages %}{{ m.content }"),
    ("an unclosed block", "{% for m in messages %}"),
    ("an undefined call", "{{ undefined_function() }}"),
    ("__class__ escape", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ("cycler globals", "{{ cycler.__init__.__globals__ }}"),
    ("messages.append", "{{ messages.append(1) }}"),
    ("namespace _attr", "{% set ns = namespace() %}{% set ns._x = 1 %}"),
    ("include", "{% include 'other.jinja' %}"),
    ("extends", "{% extends 'base.jinja' %}"),
    ("an empty template", ""),
    ("strftime 10^5", "{{ strftime_now('%Y' * 100000)|length }}"),
    ("ChatML (harmless)", "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
]
FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def run(argv: list[str], stdin: str | None = None) -> tuple[int | str, str, float]:
    """(exit code or the exception, stderr, seconds) of `scratchllm ARGV` in this process."""
    from scratchllm.cli import main

    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            mock.patch("sys.stdin", io.StringIO(stdin or "")):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 (a traceback is what this probe looks for)
            code = f"{type(exc).__name__}: {exc}"[:200]
    return code, err.getvalue(), time.perf_counter() - start


def clean(code: int | str, err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return code in (0, 2) and len(lines) <= 1 and (code == 0 or len(lines) == 1) and "Traceback" not in err


def sweep_files(base: Path, work: Path, values: list, failures: list[str]) -> tuple[int, int, float]:
    """(cases, library cases, slowest seconds) of the file mutations."""
    from scratchllm.errors import ScratchLLMError
    from scratchllm.tokenizer import Tokenizer
    from tests.hostile import mutations

    cases = library = 0
    slowest = 0.0
    for name, what, blob in mutations(base, FILES, values):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        (work / name).write_bytes(blob)
        code, err, seconds = run(["generate", "--model", str(work), "--prompt", "Hello <|im_end|> 12", "--max-new-tokens", "2"])
        cases += 1
        slowest = max(slowest, seconds)
        if not clean(code, err):
            failures.append(f"{what}: exit {code}, stderr {err.strip()[-200:]!r}")
        if name.startswith("tokenizer"):
            for backend in ("python", "tokenizers"):
                library += 1
                try:
                    tok = Tokenizer.from_hf(work, backend=backend)
                    tok.decode(tok.encode("Hi <|im_end|> 123", allowed_special="all", add_special_tokens=True))
                    if tok.chat_template is not None:
                        tok.chat_template.render([{"role": "user", "content": "hi"}])
                except ScratchLLMError as exc:
                    if "\n" in str(exc):
                        failures.append(f"library {what} ({backend}): a message of several lines")
                except BaseException as exc:  # noqa: BLE001
                    failures.append(f"library {what} ({backend}): {type(exc).__name__}: {str(exc)[:150]}")
    return cases, library, slowest


class PeakWatcher:
    """Samples the template process's VmPeak and VmHWM (/proc, Linux) every 10 ms: its peak address
    space and resident memory since it was started (the memory it had as a fork of this process before
    its exec does not count, unlike getrusage's ru_maxrss for children)."""

    def __init__(self):
        import threading

        from scratchllm.tokenizer.template_process import template_process

        self.process = template_process(256)
        self.peak_kb = {"VmPeak": 0, "VmHWM": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while not self.done.wait(0.01):
            pid = self.process.pid
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines() if pid else []
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition(":")
                if key in self.peak_kb:
                    self.peak_kb[key] = max(self.peak_kb[key], int(value.split()[0]))

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.thread.join()
        return self.peak_kb


def sweep_templates(base: Path, work: Path, failures: list[str]) -> tuple[int, float, dict[str, str]]:
    """(cases, slowest seconds, name -> outcome) of the hostile templates through `chat`."""
    outcomes = {}
    slowest = 0.0
    for name, source in TEMPLATES:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        (work / "chat_template.jinja").write_text(source, encoding="utf-8")
        code, err, seconds = run(["chat", "--model", str(work), "--max-new-tokens", "4"], stdin="hi\n")
        slowest = max(slowest, seconds)
        outcomes[name] = f"exit {code}, {seconds:.1f} s: " + (err.strip().split(": ", 2)[-1][:90] if err.strip() else "answered")
        if not clean(code, err):
            failures.append(f"template {name}: exit {code}, stderr {err.strip()[-200:]!r}")
    return len(TEMPLATES), slowest, outcomes


def named_cases(base: Path, tmp: Path, hf_tokenizer_dirs: dict[str, Path], failures: list[str]) -> int:
    """A backtracking Split regex, and a padded vocabulary of each family, through `generate`."""
    from tests.hostile import FAMILIES, padded_hf_dir

    d = tmp / "backtracking"
    shutil.copytree(base, d)
    data = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Split", "pattern": {"Regex": "(a|aa)+$"},
                                                      "behavior": "Isolated", "invert": False})
    (d / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    cases = [(f"backtracking regex on {text!r}", ["generate", "--model", str(d), "--prompt", text, "--max-new-tokens", "2"],
              expected) for text, expected in (("a" * 42 + "!", 2), ("hello", 0))]
    for family, (_, kind) in FAMILIES.items():
        padded = padded_hf_dir(hf_tokenizer_dirs[kind], tmp / f"padded-{family}", family)
        cases.append((f"padded {family} vocabulary, sampled", ["generate", "--model", str(padded), "--prompt", "Hello",
                                                               "--temperature", "1", "--max-new-tokens", "16"], 0))
    for name, argv, expected in cases:
        code, err, seconds = run(argv)
        if code != expected or not clean(code, err) or seconds > 20:
            failures.append(f"{name}: exit {code} (expected {expected}), {seconds:.1f} s, stderr {err.strip()[-200:]!r}")
    return len(cases)


def main(argv: list[str]) -> int:
    import warnings

    from tests.hf_tokenizers import build
    from tests.hostile import HOSTILE_VALUES, QUICK_VALUES, padded_hf_dir

    warnings.simplefilter("ignore")
    quick = "--quick" in argv
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kinds = {kind: build(kind, tmp / f"tok-{kind}") for kind in ("gpt2", "llama3", "qwen2")}
        base = padded_hf_dir(kinds["qwen2"], tmp / "base", "qwen2")
        named = named_cases(base, tmp, kinds, failures)
        files, library, slowest_file = sweep_files(base, tmp / "work", QUICK_VALUES if quick else HOSTILE_VALUES, failures)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        watcher = PeakWatcher()
        templates, slowest_template, outcomes = sweep_templates(base, tmp / "work", failures)
        peak = watcher.stop()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    for name, outcome in outcomes.items():
        print(f"  {name:28s} {outcome}")
    print(f"files tried through generate: {files}; through both tokenizer backends: {library}; slowest {slowest_file:.1f} s")
    print(f"templates tried through chat: {templates}; slowest {slowest_template:.1f} s (limit 2 s + loading); "
          f"template process peaks (sampled every 10 ms): address space {peak['VmPeak'] / 1024:.0f} MB (limit 256 MB), "
          f"resident {peak['VmHWM'] / 1024:.0f} MB; this process's peak RSS grew {grown * scale / 2**20:.0f} MB over "
          "the templates")
    print(f"named cases (backtracking regex, padded vocabularies): {named}")
    library_failures = sum(f.startswith("library") for f in failures)
    runs = files + templates + named
    print(f"clean (one line or an answer, no traceback): {runs - len(failures) + library_failures} of {runs} runs; "
          f"library calls that failed otherwise than in one line: {library_failures} of {library}")
    for failure in failures:
        print("FAIL:", failure)
    print("FAIL" if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
