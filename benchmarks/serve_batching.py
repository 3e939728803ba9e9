"""Continuous batching against one request at a time: `scratchllm serve` under 1, 4, 8 and 16
concurrent streaming clients, both engines in the same run.

Run from the repository root (about 10 minutes on 2 cores with the defaults):

    python -m benchmarks.serve_batching [--model DIR] [--clients 1 4 8 16] [--rounds 3] [--threads 2]

Two servers run as real subprocesses (`python -m scratchllm serve`) on loopback ports, serving the
same model (default: GPT-2 small with random weights, written to a temporary directory; `--tiny`: a
tiny GPT, to check that the benchmark runs): one with `--batching off` (one request decodes, the
others wait in order), one with batching on (`--max-batch` = the most clients). Both get
`--threads` torch threads and a queue long enough that nobody gets 503. For each round and each
number of clients the two servers take turns (so that a change in the machine's load falls on both):
every client sends `--requests` streamed greedy completions back to back, prompts of mixed lengths
(`--prompt-words`), `--max-tokens` new tokens each. Per request: time to first token (TTFT: sending
to the first text chunk) and time per output token (TPOT: first to last chunk over tokens - 1).
Reported per engine and number of clients, as medians over the rounds: aggregate tokens/s (all
completion tokens over the round's wall time), TTFT and TPOT at p50 and p99, and per-client tokens/s
(a client's tokens over its decoding time; the slowest client is shown).

The goal of issue 26, checked at the end: with 8 clients, batching's aggregate tokens/s is at least
4x the one-at-a-time engine's, and its slowest client decodes at least half as fast as one client
alone does. The client threads run in this process, on the same cores: their share is small (a few
hundred JSON chunks per second) but is not zero.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serve_load import free_port, pct

WORDS = ["alpha", "beta", "gamma", "delta", "model", "token", "serve", "batch", "row", "cache", "stream", "weights"]


@dataclass
class Timing:
    client: int
    tokens: int
    ttft: float  # seconds, sending to the first text chunk
    decode: float  # seconds, first text chunk to the last


def make_model(directory: Path, tiny: bool) -> Path:
    import torch

    from scratchllm.checkpoint import save_model
    from scratchllm.models.config import GPTConfig
    from scratchllm.models.gpt import GPT
    from scratchllm.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt-tiny" if tiny else "gpt2-small", vocab_size=50257)).eval()
    return save_model(model, directory / ("tiny" if tiny else "gpt2-small-random"), Tokenizer.gpt2())


def start_server(model: str, batching: str, max_batch: int, threads: int, max_tokens: int,
                 dtype: str = "float32") -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SCRATCHLLM_API_KEY", "SCRATCHLLM_TOKEN_DELAY")}
    env["OMP_NUM_THREADS"] = str(threads)
    server = subprocess.Popen(
        [sys.executable, "-m", "scratchllm", "serve", "--model", model, "--port", str(port), "--device", "cpu",
         "--batching", batching, "--max-batch", str(max_batch), "--queue-size", str(max_batch),
         "--max-tokens-cap", str(max_tokens), "--dtype", dtype, "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 180
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            conn.getresponse().read()
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit(f"the server (batching {batching}) did not start")
            time.sleep(0.2)


def stream(port: int, prompt: str, max_tokens: int, client: int) -> Timing:
    """One streamed greedy completion; raises on anything but a whole answer."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first = last = None
    tokens = 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["text"]:
            last = time.perf_counter()
            first = first or last
    conn.close()
    if first is None:
        raise RuntimeError("no text came back")
    return Timing(client, tokens, first - start, last - first)


def run_level(port: int, clients: int, requests: int, max_tokens: int, prompt_words: tuple[int, int],
              seed: int) -> dict:
    """`clients` threads, each sending `requests` completions back to back; the measures of the round."""
    timings: list[Timing] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        for _ in range(requests):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*prompt_words)))
            try:
                t = stream(port, prompt, max_tokens, i)
            except (OSError, RuntimeError, http.client.HTTPException, ValueError) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                timings.append(t)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    tpots = [t.decode / (t.tokens - 1) for t in timings if t.tokens > 1]
    per_client = []
    for i in range(clients):
        mine = [t for t in timings if t.client == i and t.tokens > 1]
        per_client.append(sum(t.tokens - 1 for t in mine) / sum(t.decode for t in mine))
    return {"tokens_per_s": sum(t.tokens for t in timings) / wall,
            "ttft_p50": pct([t.ttft for t in timings], 0.5), "ttft_p99": pct([t.ttft for t in timings], 0.99),
            "tpot_p50": pct(tpots, 0.5), "tpot_p99": pct(tpots, 0.99),
            "client_min": min(per_client), "client_median": statistics.median(per_client)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory to serve (default: GPT-2 small, random weights)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random GPT instead of GPT-2 small (a quick check)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2, help="completions each client sends per round, back to back")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, nargs=2, default=[5, 60], help="a prompt's words: from, to")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each server")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="both servers' --dtype (bfloat16 stays float32 on a CPU without native bf16, and says so)")
    args = ap.parse_args(argv)

    results: dict[str, dict[int, list[dict]]] = {"off": {}, "on": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_model(Path(tmp), args.tiny))
        servers = {b: start_server(model, b, max(args.clients), args.threads, args.max_tokens, args.dtype)
                   for b in ("off", "on")}
        try:
            for batching, (_, port) in servers.items():  # warm-up: first calls, buffers, the cache rows
                run_level(port, min(2, max(args.clients)), 1, 4, tuple(args.prompt_words), seed=99)
            print(f"model {model} ({args.dtype}); servers with {args.threads} threads; clients {args.clients}; {args.requests} "
                  f"request(s) of {args.max_tokens} tokens per client per round; {args.rounds} round(s)", flush=True)
            for r in range(args.rounds):
                for clients in args.clients:
                    for batching in (("off", "on") if r % 2 == 0 else ("on", "off")):
                        row = run_level(servers[batching][1], clients, args.requests, args.max_tokens,
                                        tuple(args.prompt_words), seed=r)
                        results[batching].setdefault(clients, []).append(row)
                        print(f"round {r + 1} clients {clients:2d} batching {batching:3}: "
                              f"{row['tokens_per_s']:7.1f} tokens/s", flush=True)
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(30)
    return report(results, args.clients)


def report(results: dict[str, dict[int, list[dict]]], levels: list[int]) -> dict:
    summary = {b: {c: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for c, rows in per.items()}
               for b, per in results.items()}
    print(f"\n{'clients':>7} {'batching':>8} {'tokens/s':>9} {'x off':>6} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'TPOT p50':>9} {'TPOT p99':>9} {'client tok/s':>13}")
    for c in levels:
        for b in ("off", "on"):
            s = summary[b][c]
            ratio = s["tokens_per_s"] / summary["off"][c]["tokens_per_s"]
            print(f"{c:7d} {b:>8} {s['tokens_per_s']:9.1f} {ratio:5.2f}x {1000 * s['ttft_p50']:7.0f}ms "
                  f"{1000 * s['ttft_p99']:7.0f}ms {1000 * s['tpot_p50']:7.1f}ms {1000 * s['tpot_p99']:7.1f}ms "
                  f"{s['client_min']:6.1f} (min)")
    print("\ntokens/s: all clients' completion tokens over the wall time (median of rounds); TTFT: sending to the "
          "first text; TPOT: per output token after the first; client tok/s: a client's tokens over its decoding "
          "time, the slowest client's")
    if 8 in levels and 1 in levels:
        speedup = summary["on"][8]["tokens_per_s"] / summary["off"][8]["tokens_per_s"]
        share = summary["on"][8]["client_min"] / summary["on"][1]["client_median"]
        print(f"goal at 8 clients: aggregate {speedup:.2f}x one-at-a-time (>= 4x: {'met' if speedup >= 4 else 'NOT met'}); "
              f"slowest client at {share:.2f} of one client alone (>= 0.5: {'met' if share >= 0.5 else 'NOT met'})")
    return summary


if __name__ == "__main__":
    main()
