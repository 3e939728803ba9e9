"""Load test of `scratchllm serve`: many concurrent clients, mixed streaming and non-streaming, some
leaving mid-stream; bounded in requests and time, loopback only.

Run from the repository root:  python -m benchmarks.serve_load [--clients 50] [--rounds 4]

The server runs as a real subprocess (`python -m scratchllm serve`) on a free 127.0.0.1 port, serving
a tiny random GPT (or --model DIR). First a reference round: one client, requests one after another.
Then `--rounds` load rounds: `--clients` threads each send `--requests` requests, in turn
  - chat, streamed (time to first token measured),
  - completion, not streamed,
  - chat, streamed, the client hanging up after two chunks (its slot must come free),
  - completion, not streamed, the client hanging up after 0.1 s (its slot must come free too),
  - a malformed or out-of-range request (bad JSON, wrong types, a seed beyond 64 bits, ...): a 4xx
    in OpenAI's error shape is right, a 500 or another shape is an error,
  - valid values at the edges of their ranges (temperature 1e-39, top_p 1e-46, seed 2^64 - 1): 200.
A 503 (queue full) makes the client wait the Retry-After (capped at 0.2 s here) and go on to its
next request; it is counted, not retried. Reported per round: requests/s, tokens/s, p50/p95 latency,
p50/p95 time to first token, 503s, and the server's resident memory (VmRSS from /proc/PID/status);
at the end, requests by status, and how many slow clients (headers sent a line at a time) the
server cut off within its header deadline (`--header-timeout-s`).

Fails (exit 1) on any error other than a 503, on a slot still held after a round, on a slow client
held past the deadline, or when the server's memory grows by more than --rss-slack-mb from the
first load round to the last.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    kind: str
    status: int | str  # HTTP status, "hung-up" for a client that left on purpose, or an error text
    latency: float = 0.0  # seconds to the whole answer
    ttft: float | None = None  # seconds to the first content chunk (streams)
    tokens: int = 0


@dataclass
class Round:
    name: str
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    rss_mb: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_model(directory: Path) -> Path:
    import torch

    from scratchllm.checkpoint import save_model
    from scratchllm.models.config import GPTConfig
    from scratchllm.models.gpt import GPT
    from scratchllm.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=50257)).eval()  # emb 64, 2 layers, context 128
    return save_model(model, directory / "tiny", Tokenizer.gpt2(), extra={"prompt_style": "phi3"})


# Bodies a hostile-but-fair client sends: each must get a 4xx in OpenAI's error shape, never a 500.
MALFORMED = [
    '{"prompt": "x",', "[1, 2]", "{}", '{"prompt": 5}', '{"prompt": "x", "max_tokens": "5"}',
    '{"prompt": "x", "max_tokens": -3}', '{"prompt": "x", "temperature": 3}', '{"prompt": "x", "temperature": -1e-9}',
    '{"prompt": "x", "top_p": 0}', '{"prompt": "x", "stream": 1}', '{"prompt": "x", "n": 1000}',
    '{"prompt": "x", "echo": true}', '{"prompt": "x", "stop": ["a", ""]}', '{"prompt": "x", "seed": 18446744073709551616}',
    '{"prompt": "x", "seed": -9223372036854775809}', '{"prompt": "x", "seed": 1.5}', '{"prompt": "x", "logit_bias": {"1": 5}}',
    '{"messages": []}', '{"messages": [{"role": "robot", "content": "hi"}]}', '{"messages": [{"role": "user"}]}',
    '{"prompt": "' + " word" * 300 + '"}', '{"prompt": "x", "top_k": 0}', '\u0000\u0001', '{"prompt": "x", "max_tokens": 1e400}',
]
EDGES = [{"temperature": 1e-39}, {"temperature": 1e-300, "top_p": 1e-46}, {"seed": 2**64 - 1, "temperature": 1.0},
         {"seed": -(2**63)}, {"top_p": 5e-324, "seed": 7}]


def request(port: int, kind: str, max_tokens: int, rng: random.Random) -> Result:
    words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "model", "token", "serve"]) for _ in range(rng.randint(3, 20)))
    if kind == "malformed":
        return malformed(port, rng)
    if kind == "completion-hang-up":
        return hang_up(port, words, max_tokens)
    if kind == "completion":
        path, body = "/v1/completions", {"prompt": words, "max_tokens": max_tokens, "temperature": 0.8, "seed": rng.randint(0, 9999)}
    elif kind == "edge":
        path, body = "/v1/completions", {"prompt": words, "max_tokens": max_tokens, **rng.choice(EDGES)}
    else:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": words}], "max_tokens": max_tokens,
                                             "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            retry = float(response.getheader("retry-after") or 0)
            response.read()
            return Result(kind, response.status, time.perf_counter() - start, None, int(retry * 1000))
        if kind in ("completion", "edge"):
            data = json.loads(response.read())
            return Result(kind, 200, time.perf_counter() - start, None, data["usage"]["completion_tokens"])
        ttft, chunks, tokens, done = None, 0, 0, False
        for line in response:
            if not line.startswith(b"data: "):
                continue
            if line.strip() == b"data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return Result(kind, f"error in stream: {chunk['error']['message']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
                if kind == "hang-up" and chunks >= 2:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                    return Result(kind, "hung-up", time.perf_counter() - start, ttft)
        if not done:
            return Result(kind, "stream ended without [DONE]")
        return Result(kind, 200, time.perf_counter() - start, ttft, tokens)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Result(kind, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def malformed(port: int, rng: random.Random) -> Result:
    """One bad request: a 4xx with an {"error": {...}} body is the right answer ("4xx")."""
    body = rng.choice(MALFORMED)
    path = "/v1/chat/completions" if '"messages"' in body else "/v1/completions"
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body.encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status == 503:
            return Result("malformed", 503, time.perf_counter() - start, None, int(float(response.getheader("retry-after") or 0) * 1000))
        shape = set(json.loads(data).get("error", {})) == {"message", "type", "param", "code"}
        if 400 <= response.status < 500 and shape:
            return Result("malformed", "4xx", time.perf_counter() - start)
        return Result("malformed", f"{response.status} for {body[:40]!r}: {data[:120]!r}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Result("malformed", f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def hang_up(port: int, words: str, max_tokens: int) -> Result:
    """A non-streamed completion whose client gives up after 0.1 s (the server must free its slot)."""
    body = json.dumps({"prompt": words, "max_tokens": max_tokens, "temperature": 0.8}).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.1)
        return Result("completion-hang-up", "hung-up", 0.1)
    except OSError as exc:
        return Result("completion-hang-up", f"{type(exc).__name__}: {exc}")


def slow_clients(port: int, n: int, deadline_s: float) -> tuple[int, int]:
    """Open n connections that send a request line and one header, then nothing; return (how many
    the server closed within deadline_s + 2 s, n)."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    end = time.monotonic() + deadline_s + 2.0
    closed = 0
    for sock in socks:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            while sock.recv(4096):
                pass
            closed += 1
        except ConnectionResetError:
            closed += 1
        except OSError:
            pass
        finally:
            sock.close()
    return closed, n


def run_round(name: str, port: int, clients: int, per_client: int, max_tokens: int, seed: int, limit_s: float) -> Round:
    kinds = ["chat-stream", "completion", "hang-up", "completion-hang-up", "malformed", "edge"]
    rnd = Round(name)
    lock = threading.Lock()
    deadline = time.monotonic() + limit_s

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        for j in range(per_client):
            if time.monotonic() > deadline:
                return
            result = request(port, kinds[(i + j) % len(kinds)], max_tokens, rng)
            with lock:
                rnd.results.append(result)
            if result.status == 503:
                time.sleep(min(result.tokens / 1000, 0.2) * rng.uniform(0.5, 1.0))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rnd.wall = time.perf_counter() - start
    return rnd


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(rnd: Round) -> dict:
    ok = [r for r in rnd.results if r.status == 200]
    ttfts = [r.ttft for r in rnd.results if r.ttft is not None]
    served = [r for r in rnd.results if r.status in (200, "hung-up")]
    return {
        "round": rnd.name, "requests": len(rnd.results), "ok": len(ok),
        "hung_up": sum(r.status == "hung-up" for r in rnd.results), "busy_503": sum(r.status == 503 for r in rnd.results),
        "bad_4xx": sum(r.status == "4xx" for r in rnd.results),
        "errors": [r.status for r in rnd.results if r.status not in (200, 503, "hung-up", "4xx")],
        "wall_s": rnd.wall, "served_per_s": len(served) / rnd.wall, "tokens_per_s": sum(r.tokens for r in ok) / rnd.wall,
        "p50_ms": 1000 * pct([r.latency for r in ok], 0.5), "p95_ms": 1000 * pct([r.latency for r in ok], 0.95),
        "ttft_p50_ms": 1000 * pct(ttfts, 0.5), "ttft_p95_ms": 1000 * pct(ttfts, 0.95), "rss_mb": rnd.rss_mb,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory to serve (default: a tiny random GPT)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=4, help="requests per client per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--queue-size", type=int, default=8)
    ap.add_argument("--round-limit-s", type=float, default=120.0, help="no new requests after this long in a round")
    ap.add_argument("--rss-slack-mb", type=float, default=16.0, help="allowed VmRSS growth, first load round to last")
    ap.add_argument("--server-threads", type=int, default=None,
                    help="OMP_NUM_THREADS of the server (torch's intra-op threads); default: torch's choice")
    ap.add_argument("--header-timeout-s", type=float, default=2.0, help="the server's deadline for a request's headers")
    ap.add_argument("--slow-clients", type=int, default=50, help="connections that send their headers too slowly")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_model(Path(tmp)))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("SCRATCHLLM_API_KEY", "SCRATCHLLM_TOKEN_DELAY")}
        if args.server_threads:
            env["OMP_NUM_THREADS"] = str(args.server_threads)
        server = subprocess.Popen(
            [sys.executable, "-m", "scratchllm", "serve", "--model", model, "--port", str(port), "--device", "cpu",
             "--queue-size", str(args.queue_size), "--log-level", "warning", "--header-timeout-s", str(args.header_timeout_s)],
            env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/health")
                    health = json.loads(conn.getresponse().read())
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the server did not start")
                    time.sleep(0.2)
            print(f"server pid {server.pid} on port {port}: {health['model']}, context {health['context_length']}, "
                  f"queue {args.queue_size}, threads {args.server_threads or 'default'}; {args.clients} clients x {args.requests} requests x {args.rounds} rounds, "
                  f"max_tokens {args.max_tokens}", flush=True)
            rounds = [run_round("reference: 1 client, sequential", port, 1, 3 * args.requests, args.max_tokens, 0,
                                args.round_limit_s)]
            rounds[-1].rss_mb = rss_mb(server.pid)
            for k in range(args.rounds):
                rounds.append(run_round(f"load {k + 1}: {args.clients} clients", port, args.clients, args.requests,
                                        args.max_tokens, k + 1, args.round_limit_s))
                time.sleep(0.5)  # let the last abandoned jobs finish
                rounds[-1].rss_mb = rss_mb(server.pid)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            left = json.loads(conn.getresponse().read())["queue"]["admitted"]
            cut_off, slow = slow_clients(port, args.slow_clients, args.header_timeout_s)
        finally:
            server.terminate()
            server.wait(30)

    rows = [summary(r) for r in rounds]
    ref = rows[0]["served_per_s"]
    print(f"\n{'round':34} {'reqs':>5} {'ok':>4} {'hung':>4} {'503':>4} {'req/s':>7} {'x ref':>6} {'tok/s':>7} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'ttft50':>7} {'ttft95':>7} {'RSS MB':>7}")
    for row in rows:
        print(f"{row['round']:34} {row['requests']:5d} {row['ok']:4d} {row['hung_up']:4d} {row['busy_503']:4d} "
              f"{row['served_per_s']:7.1f} {row['served_per_s'] / ref:5.2f}x {row['tokens_per_s']:7.0f} "
              f"{row['p50_ms']:7.0f} {row['p95_ms']:7.0f} {row['ttft_p50_ms']:7.0f} {row['ttft_p95_ms']:7.0f} "
              f"{row['rss_mb']:7.1f}")
    print("\nreq/s counts answers served (whole ones and streams the client left); x ref = against the sequential round.")
    statuses: dict[str, int] = {}
    for rnd in rounds:
        for r in rnd.results:
            key = str(r.status) if r.status in (200, 503, "hung-up", "4xx") else "error"
            statuses[key] = statuses.get(key, 0) + 1
    print(f"requests by status: {statuses} (4xx: malformed requests answered in OpenAI's error shape)")
    print(f"slow clients cut off within the {args.header_timeout_s:g} s header deadline (+2 s): {cut_off} of {slow}")
    errors = [e for row in rows for e in row["errors"]]
    growth = rows[-1]["rss_mb"] - rows[1]["rss_mb"] if len(rows) > 2 else 0.0
    print(f"errors other than 503: {len(errors)}; slots held after the last round: {left}; "
          f"RSS growth from load round 1 to {len(rows) - 1}: {growth:+.1f} MB (allowed {args.rss_slack_mb})")
    failed = bool(errors) or left != 0 or growth > args.rss_slack_mb or cut_off != slow
    if errors:
        print("errors:", errors[:10])
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
