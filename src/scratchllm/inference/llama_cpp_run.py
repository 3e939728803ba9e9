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
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(request), capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ScratchLLMError(f"llama.cpp on {model}: no answer within {timeout:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ScratchLLMError(f"llama.cpp on {model}: {last}")
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


def main() -> int:
    """The llama.cpp process: one JSON request on stdin, one JSON answer on stdout."""
    try:
        request = json.loads(sys.stdin.read())
        answer = _answer(request)
    except Exception as exc:  # any failure is one line for the parent process
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
