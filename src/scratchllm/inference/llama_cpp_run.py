"""Running a GGUF file in llama.cpp itself (the `llama-cpp-python` package, which builds llama.cpp from
source), always in a process of its own: llama.cpp and PyTorch each bring an OpenMP runtime, and the
two crash in one process. This module imports neither torch nor scratchllm's model code, so
`python -m scratchllm.inference.llama_cpp_run` is that process: it reads one JSON request on stdin and
writes one JSON answer on stdout. `run_llama_cpp(path, ...)` starts it from any process and returns the
answer; the GGUF tests and benchmarks/gguf_agreement.py check exports against it.

    request                                     answer
    {"model": "m.gguf",
     "tokenize": ["text", ...],                 "tokens": [[id, ...], ...]      special-token text
     "add_bos": false,                                                          parsed as special tokens
     "greedy": [{"prompt": [id, ...],           "greedy": [[id, ...], ...]      argmax decoding
                 "max_tokens": 32}, ...],
     "logits": [[id, ...], ...],                "logits": [{"shape": [T, V],    every position's logits,
                                                            "float32": b64}]     little-endian float32
     "threads": 2}                              "metadata": {key: value}        the file's keys (no arrays)

`time_llama_cpp(paths, prompt, max_tokens)` asks the same process for greedy decoding timed
(benchmarks/generation.py): {"timed": {"models": [...], "prompt": [...], "max_tokens": N, "repeat": R,
"threads": T, "plain_buffers": bool}} -> {"timed": [{"tokens": [...], "seconds": [...]}, ...]}, one
entry per file: each file loaded once, one short warm-up, then R decodes of the prompt and N new
tokens, each timed from the prompt's evaluation to the last token (the file's loading excluded).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchLLMError


def run_llama_cpp(model: str | os.PathLike[str], tokenize: list[str] = (), greedy: list[dict[str, Any]] = (),
                  logits: list[list[int]] = (), add_bos: bool = False, threads: int = 2,
                  timeout: float = 600) -> dict[str, Any]:
    """llama.cpp's answer for GGUF file `model` (see the module docstring), from a process of its own."""
    request = {"model": str(Path(model).absolute()), "tokenize": list(tokenize), "greedy": list(greedy),
               "logits": [list(ids) for ids in logits], "add_bos": add_bos, "threads": threads}
    return _ask_child(request, str(model), threads, timeout)


def time_llama_cpp(models: list[str | os.PathLike[str]], prompt: list[int], max_tokens: int, threads: int = 2,
                   repeat: int = 1, plain_buffers: bool = True, timeout: float = 900) -> list[dict[str, Any]]:
    """Greedy decoding of `prompt` + `max_tokens` new tokens by llama.cpp on each GGUF file, timed, in a
    process of its own (see the module docstring); plain_buffers=False lets llama.cpp repack weights
    for its own kernels (AMX, interleaved q8_0), which crashes q8_0 files on some CPUs."""
    request = {"timed": {"models": [str(Path(m).absolute()) for m in models], "prompt": list(prompt),
                         "max_tokens": max_tokens, "repeat": repeat, "threads": threads, "plain_buffers": plain_buffers}}
    return _ask_child(request, ", ".join(Path(m).name for m in models), threads, timeout)["timed"]


def _ask_child(request: dict[str, Any], what: str, threads: int, timeout: float) -> dict[str, Any]:
    """Run this module as a child process on `request` (JSON in, JSON out); its failure or silence
    past `timeout` is one line naming `what`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(request), capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ScratchLLMError(f"llama.cpp on {what}: no answer within {timeout:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ScratchLLMError(f"llama.cpp on {what}: {last}")
    return json.loads(done.stdout)


def decode_logits(block: dict[str, Any]) -> Any:
    """A "logits" entry of the answer as a numpy array (T, V)."""
    import numpy as np

    return np.frombuffer(base64.b64decode(block["float32"]), dtype="<f4").reshape(block["shape"])


def _plain_weight_buffers() -> None:
    """Keep llama.cpp's weights in plain CPU buffers: its extra CPU layouts (AMX tiles, repacked q8_0
    blocks) crash q8_0 files on the machines this project runs on (a segfault on the first matrix
    product, also for a file llama.cpp quantized itself). llama-cpp-python has no argument for it, so
    its default model parameters are wrapped."""
    import llama_cpp.llama as wrapper

    default = wrapper.llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    wrapper.llama_cpp.llama_model_default_params = params


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from llama_cpp import Llama

    _plain_weight_buffers()

    needs_model = bool(request["greedy"] or request["logits"])
    longest = max([len(g["prompt"]) + g["max_tokens"] for g in request["greedy"]] +
                  [len(ids) for ids in request["logits"]] + [8])
    llm = Llama(model_path=request["model"], vocab_only=not needs_model, n_ctx=longest, n_batch=longest,
                n_ubatch=longest, n_threads=request["threads"], n_threads_batch=request["threads"],
                logits_all=needs_model, type_k=0, type_v=0, verbose=False)  # GGML_TYPE_F32 caches: no f16 rounding
    out: dict[str, Any] = {
        "tokens": [llm.tokenize(text.encode("utf-8"), add_bos=request["add_bos"], special=True)
                   for text in request["tokenize"]],
        "metadata": {k: v for k, v in llm.metadata.items()},
    }
    greedy = []
    for g in request["greedy"]:
        llm.reset()
        llm.eval(g["prompt"])
        new: list[int] = []
        for _ in range(g["max_tokens"]):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # the first of equal maxima, as torch.argmax
            new.append(token)
            llm.eval([token])
        greedy.append(new)
    out["greedy"] = greedy
    blocks = []
    for ids in request["logits"]:
        llm.reset()
        llm.eval(ids)
        values = np.ascontiguousarray(llm.scores[: len(ids)], dtype="<f4")
        blocks.append({"shape": list(values.shape), "float32": base64.b64encode(values.tobytes()).decode("ascii")})
    out["logits"] = blocks
    return out


def _timed(request: dict[str, Any]) -> dict[str, Any]:
    import time

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    if request["plain_buffers"]:
        _plain_weight_buffers()
    prompt, n = request["prompt"], request["max_tokens"]
    results = []
    for path in request["models"]:
        llm = Llama(model_path=path, n_ctx=len(prompt) + n, n_batch=len(prompt), n_ubatch=len(prompt),
                    n_threads=request["threads"], n_threads_batch=request["threads"], type_k=0, type_v=0,
                    verbose=False)  # float32 KV cache, as ours; logits of the last position only, as ours

        def decode(count: int) -> list[int]:
            llm.reset()
            llm.eval(prompt)
            new: list[int] = []
            for _ in range(count):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
                new.append(int(np.argmax(logits)))  # the first of equal maxima, as torch.argmax
                llm.eval(new[-1:])
            return new

        decode(min(n, 8))  # warm-up: thread pool, first-touch of the weights
        seconds, tokens = [], []
        for _ in range(request["repeat"]):
            start = time.perf_counter()
            tokens = decode(n)
            seconds.append(time.perf_counter() - start)
        results.append({"tokens": tokens, "seconds": seconds})
        del llm
    return {"timed": results}


def main() -> int:
    """The llama.cpp process: one JSON request on stdin, one JSON answer on stdout."""
    try:
        request = json.loads(sys.stdin.read())
        answer = _timed(request["timed"]) if "timed" in request else _answer(request)
    except Exception as exc:  # any failure is one line for the parent process
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
