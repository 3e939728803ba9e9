"""The serving engine: requests admitted up to a bound and decoded on one worker thread, off the
server's event loop, their text handed back to each request's coroutine as events.

A request is a `Job`: one `RowState` (rows.py) per choice (`n`), a cancel flag, and an asyncio queue
of events ("text", choice, piece), ("done", choice, finish_reason, tokens) and ("error", message).
Two engines decode jobs (`ServeSettings.batching`):

- `BatchEngine` (on, the default): continuous batching (Yu et al. 2022, "Orca"). Up to `max_batch`
  rows decode together, one token each per step, so the weights are read once per step for all of
  them (decoding a small model is bound by reading its weights: eight rows cost little more than
  one). A job joins at the next step: its prompt is fed in chunks of `prefill_chunk` tokens, one
  chunk per step, while the running rows keep decoding (the idea of Sarathi's chunked prefill); its
  n choices share that prefill and then decode as n rows. Each row leaves on its own (a stop id, a
  stop string, max_tokens, its client gone); a row whose decoding fails ends its job with an error
  and the others go on.
- `SequentialEngine` (off): one job at a time through generation.py's batch loop, the rest waiting
  in order: the engine before batching, kept so that the two can be compared (benchmarks/serve_batching.py).

Both admit at most `capacity` jobs (decoding or waiting); `submit` refuses more (the server's 503).
A job that is abandoned (its client left) gives its place back at once if it waits, and stops within
one step if it decodes.

The continuous batch keeps its keys and values in `RowCaches` (batch_cache.py): one row per decoding
sequence, each filling its own positions from 0, so rows join and leave without touching the others.

What a greedy answer gets: the same tokens as the request alone (`generation.generate`) on every
model the tests try, prompts of mixed lengths joining mid-stream included. It is the same
computation row by row, but not bit for bit: a product over B rows and a masked attention sum in
another order than over one row, so logits agree to float rounding (~1e-6 relative), and two tokens
whose scores tie within that could swap.

Log-probabilities (OpenAI's `logprobs`, logprobs.py): a row that asks for them is offered its
token's score where it is sampled (`sample_rows`, in both engines), from the same logits. A row that
echoes its prompt with log-probabilities has the prompt scored first (`_score_prompts`: one forward
pass over the prompt, on the worker between steps, so running rows wait for it as for a prefill chunk,
and only the finished scores are written to the row). A request's rows may have different prompts (a
list of prompts): each prompt gets its own prefill, and choices of one prompt share theirs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from scratchllm.inference.batch_cache import RowCaches
from scratchllm.inference.generation import decode_rows, default_keep, window_start
from scratchllm.inference.logprobs import TokenScore, score_prompt
from scratchllm.inference.rows import RowState, sample_rows
from scratchllm.models.decode_kernels import matrix_vector_kernels
from scratchllm.models.gpt import GPT, KVCache

log = logging.getLogger("scratchllm.serve")

FAILED = "generation failed; the server log has the details"


class Job:
    """One admitted request: its rows (one per choice), a cancel flag and an event queue.

    Events, put on the request's event loop by the worker: ("text", choice, piece) as text is
    decoded, ("done", choice, finish_reason, completion_tokens) as each choice ends, or ("error",
    message) once, ending them all. `abandon()` is what a request calls when its client has gone
    (or it has finished): decoding stops within one step, and a job still waiting gives its place
    back at once.
    """

    def __init__(self, rows: list[RowState]):
        self.rows = rows
        self.cancel = threading.Event()
        self.state = "new"  # -> "waiting" -> "running" -> "done" (changed under the engine's lock)
        self.engine: Engine | None = None
        self.reported: set[int] = set()  # choices whose "done" was sent
        self.failed = False
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length (choices of one prompt count it once, as OpenAI's usage does)."""
        return sum(map(len, {tuple(row.tokens[: row.prompt_length]) for row in self.rows}))

    def emit(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutdown): nobody is listening
            self.cancel.set()

    def abandon(self) -> None:
        self.cancel.set()
        if self.engine is not None:
            self.engine.release(self, only_if_waiting=True)


class Engine:
    """What both engines share: admission (at most `capacity` jobs), the worker thread, and telling
    a job's request what happened to its rows."""

    def __init__(self, model: GPT, capacity: int, token_delay: float = 0.0):
        self.model, self.capacity, self.token_delay = model, capacity, token_delay
        self._lock = threading.Lock()
        self.admitted = 0  # jobs decoding or waiting
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="scratchllm-decode", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether some job is decoding."""
        return self.decoding > 0

    @property
    def decoding(self) -> int:
        """Rows decoding (or being prefilled) now."""
        raise NotImplementedError

    def submit(self, job: Job) -> bool:
        """Queue the job; False when the engine holds `capacity` jobs already."""
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            job.state, job.engine = "waiting", self
        self._jobs.put(job)
        return True

    def release(self, job: Job, only_if_waiting: bool = False) -> None:
        """Give the job's place back (once): a waiting one when abandoned, any one when it ends."""
        with self._lock:
            if job.state == "waiting" or (job.state == "running" and not only_if_waiting):
                job.state = "done"
                self.admitted -= 1

    def _start(self, job: Job) -> bool:
        """Mark a job taken from the queue as running; False when it was abandoned while it waited."""
        with self._lock:
            if job.state != "waiting":  # its place is free already
                return False
            job.state = "running"
            return True

    def close(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        raise NotImplementedError

    def _deliver(self, job: Job, pieces: list[tuple[int, str]]) -> None:
        """Send the text of one step, then "done" for each choice that ended. The job's place is given
        back before its last "done", so that its client may send the next request at once."""
        if job.failed:
            return
        for choice, piece in pieces:
            if piece:
                job.emit(("text", choice, piece))
        for choice, row in enumerate(job.rows):
            if row.finished and choice not in job.reported:
                job.reported.add(choice)
                if len(job.reported) == len(job.rows):
                    self.release(job)
                job.emit(("done", choice, row.finish_reason, row.new_tokens))

    def _fail(self, job: Job) -> None:
        """End the job with an error (its rows leave the batch; the details are in the log)."""
        if job.failed:
            return
        job.failed = True
        for row in job.rows:
            row.finish("error")
        self.release(job)
        job.emit(("error", FAILED))

    def _score_prompts(self, job: Job) -> bool:
        """Score the prompt of each row that echoes it with log-probabilities (`score_prompt`; once per
        distinct prompt). False when that failed: the job has ended with an error."""
        scored: dict[tuple, list[TokenScore]] = {}
        try:
            for row in job.rows:
                wants = row.logprobs
                if wants is None or not wants.echo or wants.prompt is not None:
                    continue
                key = (tuple(row.tokens[: row.prompt_length]), wants.top, row.vocab_limit)
                if key not in scored:
                    scored[key] = score_prompt(self.model, *key)
                wants.prompt = scored[key]
        except Exception:  # a bug, or the device ran out of memory: answer 500, keep serving
            log.exception("scoring a prompt failed")
            self._fail(job)
            return False
        return True

    def _cancel_if_abandoned(self, job: Job) -> None:
        if job.cancel.is_set() and not job.failed:
            for row in job.rows:
                row.finish("cancelled")
            self._deliver(job, [])


# ------------------------------------------------------------------------------------------------
# One job at a time


class SequentialEngine(Engine):
    """Decodes one job at a time (its n choices as one batch of `generation.decode_rows`); up to
    queue_size more wait in order."""

    def __init__(self, model: GPT, queue_size: int, token_delay: float = 0.0):
        self._current: Job | None = None
        super().__init__(model, 1 + queue_size, token_delay)

    @property
    def decoding(self) -> int:
        job = self._current
        return len(job.rows) if job is not None else 0

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not self._start(job):
                continue
            self._current = job
            try:
                if not self._score_prompts(job):
                    continue
                steps = decode_rows(self.model, job.rows)
                for step in steps:
                    self._deliver(job, step)
                    if self.token_delay:
                        time.sleep(self.token_delay)
                    self._cancel_if_abandoned(job)
                steps.close()
                self._deliver(job, [])
            except Exception:  # a bug, or the device ran out of memory: answer 500, keep serving
                log.exception("generation failed")  # the details go to the log, not to the client
                self._fail(job)
            finally:
                self._current = None
                self.release(job)


# ------------------------------------------------------------------------------------------------
# Continuous batching


@dataclass(eq=False)
class Seat:
    """A row of the continuous batch: its job and choice, and where its window stands in the cache.
    start: the window's first token (an index into row.tokens); length: positions cached."""

    job: Job
    choice: int
    row: RowState
    start: int = 0
    length: int = 0


@dataclass(eq=False)
class Prefill:
    """A window being fed to the model in chunks, for the seats waiting on it (the n choices of one
    prompt share it; a row whose window jumped re-fills alone)."""

    window: list[int]
    start: int
    seats: list[Seat]
    done: int = 0  # tokens fed
    cache: KVCache | None = None


@dataclass(eq=False)
class _Step:
    """The text each job's rows released in one engine step."""

    pieces: dict[Job, list[tuple[int, str]]] = field(default_factory=dict)

    def add(self, seat: Seat, piece: str) -> None:
        self.pieces.setdefault(seat.job, []).append((seat.choice, piece))


class BatchEngine(Engine):
    """Continuous batching over `RowCaches` (see the module docstring): each step feeds one chunk of
    the oldest waiting prompt, then one token of every decoding row."""

    def __init__(self, model: GPT, max_batch: int, queue_size: int, prefill_chunk: int = 64,
                 token_delay: float = 0.0):
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.keep = default_keep(model.config.context_length)
        self.seats: list[Seat] = []  # decoding rows; seats[b] lives in cache row b
        self.prefills: collections.deque[Prefill] = collections.deque()
        self.waiting: collections.deque[Job] = collections.deque()  # taken from the queue, no free rows yet
        self.caches: RowCaches | None = None
        self._in_use = 0
        super().__init__(model, max_batch + queue_size, token_delay)

    @property
    def decoding(self) -> int:
        return self._in_use  # a count the worker keeps: other threads must not walk its lists

    def _count(self) -> int:
        self._in_use = len(self.seats) + sum(len(p.seats) for p in self.prefills)
        return self._in_use

    # -- the worker loop -------------------------------------------------------------------------

    def _work(self) -> None:
        self.model.eval()
        with torch.inference_mode():  # this thread runs nothing else: the whole loop may be inside
            while self._admit():
                step = _Step()
                try:
                    if self.prefills:
                        self._prefill_step(step)
                    if self.seats:
                        self._decode_step(step)
                    for job, pieces in step.pieces.items():
                        self._deliver(job, pieces)
                    for job in {s.job for s in self._all_seats()}:
                        self._cancel_if_abandoned(job)
                    self._leave_finished()
                except Exception:  # a bug in the engine itself: end what it holds, start afresh, keep serving
                    log.exception("generation failed")
                    for job in {s.job for s in self._all_seats()}:
                        self._fail(job)
                    self.seats, self.prefills, self.caches = [], collections.deque(), None
                self._count()
                if self.token_delay and step.pieces:
                    time.sleep(self.token_delay)

    def _all_seats(self) -> list[Seat]:
        return self.seats + [s for p in self.prefills for s in p.seats]

    def _admit(self) -> bool:
        """Take new jobs from the queue (waiting for one when idle) and seat those that fit, in order.
        False once the engine is closed."""
        idle = not self.seats and not self.prefills and not self.waiting
        while True:
            try:
                job = self._jobs.get(block=idle)
            except queue.Empty:
                break
            if job is None:
                return False
            self.waiting.append(job)
            idle = False
        while self.waiting and (self.waiting[0].state != "waiting" or len(self.waiting[0].rows) <= self._free()):
            job = self.waiting.popleft()
            if self._start(job):
                self._seat(job)
        self._count()
        return True

    def _free(self) -> int:
        return self.max_batch - self._count()

    def _seat(self, job: Job) -> None:
        """The job's rows wait for their prompt's prefill; choices of one prompt share it. Prompts to
        echo with log-probabilities are scored first."""
        if not self._score_prompts(job):
            return
        by_prompt: dict[tuple[int, ...], Prefill] = {}
        for choice, row in enumerate(job.rows):
            if row.finished:
                continue
            start = window_start(len(row.tokens), self.model.config.context_length, self.keep)
            key = tuple(row.tokens[start:])
            if key not in by_prompt:
                by_prompt[key] = Prefill(list(key), start, [])
                self.prefills.append(by_prompt[key])
            by_prompt[key].seats.append(Seat(job, choice, row))
        self._deliver(job, [])  # rows that had nothing to decode (max_tokens 0)

    def _leave_finished(self) -> None:
        """Finished rows (done, cancelled, failed) leave the batch and their prefills."""
        for seat in [s for s in self.seats if s.row.finished]:
            self._unseat(seat)
        for p in list(self.prefills):
            p.seats = [s for s in p.seats if not s.row.finished]
            if not p.seats:
                self.prefills.remove(p)

    def _unseat(self, seat: Seat) -> None:
        """Take a row out of the batch: the last row moves into its cache row, so that rows
        0..B-1 stay the decoding ones; what they leave behind is zeroed."""
        b = self.seats.index(seat)
        last = len(self.seats) - 1
        self.caches.clear(b, seat.length)
        if b != last:
            moved = self.seats[last]
            self.caches.move(last, b, moved.length)
            self.caches.clear(last, moved.length)
            self.seats[b] = moved
        self.seats.pop()

    # -- prefill ---------------------------------------------------------------------------------

    def _prefill_step(self, step: _Step) -> None:
        """Feed the next chunk of the oldest prefill (`GPT.hidden_states` with a one-row KVCache, as
        `generate` feeds a prompt); when its window is complete, sample each seat's first token and
        give the seats that go on a row of the batch."""
        p = self.prefills[0]
        model, weight = self.model, self.model.tok_emb.weight
        chunk = p.window[p.done : p.done + self.prefill_chunk]
        try:
            if p.cache is None:
                p.cache = KVCache.allocate(model.config, 1, len(p.window), weight.device, weight.dtype)
            idx = torch.tensor([chunk], device=weight.device)  # (1, T)
            with matrix_vector_kernels(weight, idx.numel()):
                h = model.hidden_states(idx, cache=p.cache)  # (1, T, C)
                p.done += len(chunk)
                if p.done < len(p.window):
                    return
                logits = model.logits(h[:, -1])  # (1, V)
        except Exception:
            log.exception("generation failed")
            for seat in p.seats:
                self._fail(seat.job)
            self.prefills.popleft()
            return
        self.prefills.popleft()
        for seat in p.seats:
            seat.start, seat.length = p.start, len(p.window)
        for seat, token in self._sample(p.seats, logits.expand(len(p.seats), -1)):
            self._accept(seat, token, step)
            if not seat.row.finished:
                if self.caches is None:
                    self.caches = RowCaches(model, self.max_batch)
                self.caches.put(len(self.seats), p.cache, seat.length)
                self.seats.append(seat)

    # -- decode ----------------------------------------------------------------------------------

    def _decode_step(self, step: _Step) -> None:
        """One token for every decoding row: row b feeds its newest token at its own position."""
        ctx = self.model.config.context_length
        for seat in list(self.seats):  # a window that jumps is re-filled, as generate re-fills it
            start = window_start(len(seat.row.tokens), ctx, self.keep)
            if start != seat.start:
                self._unseat(seat)  # the row goes on, from its new window
                self.prefills.appendleft(Prefill(seat.row.tokens[start:], start, [seat]))
        if not self.seats:
            return
        seats, logits = self._forward(0, self.seats)
        for seat in seats:
            seat.length += 1
        for seat, token in self._sample(seats, logits):
            self._accept(seat, token, step)

    def _accept(self, seat: Seat, token: int, step: _Step) -> None:
        """The row takes its token (its text, its stops); a row that fails to ends its job."""
        try:
            step.add(seat, seat.row.accept(token))
        except Exception:
            log.exception("generation failed")
            self._fail(seat.job)

    def _forward(self, first: int, seats: list[Seat]) -> tuple[list[Seat], torch.Tensor]:
        """Logits (B, V) of the next token of `seats` (cache rows first..first+B-1). If the batch fails,
        each row is tried alone, and the jobs of the rows that fail alone are ended: (seats that
        succeeded, their logits)."""
        model, weight = self.model, self.model.tok_emb.weight
        lengths = [s.length for s in seats]
        positions = torch.tensor(lengths, device=weight.device)  # (B,)
        try:
            span = max(lengths) + 1  # the longest row's positions, the new one included (no device sync)
            self.caches.reserve(span)
            cache = self.caches.step(first, positions, span)
            idx = torch.tensor([[s.row.tokens[-1]] for s in seats], device=weight.device)  # (B, 1)
            mask = torch.arange(cache.span, device=weight.device)[None, :] <= positions[:, None]  # (B, S)
            with matrix_vector_kernels(weight, len(seats)):
                h = model.transformer(idx, positions[:, None], mask[:, None, None, :], cache)  # (B, 1, C)
                return seats, model.logits(h[:, -1])  # (B, V)
        except Exception:
            if len(seats) == 1:
                log.exception("generation failed")
                self._fail(seats[0].job)
                return [], weight.new_empty(0, model.config.vocab_size)
            log.warning("a decode step of %d rows failed; trying each row alone", len(seats), exc_info=True)
        kept, logits = [], []
        for b, seat in enumerate(seats):
            alone, row_logits = self._forward(first + b, [seat])
            kept += alone
            logits.append(row_logits)
        return kept, torch.cat(logits)

    def _sample(self, seats: list[Seat], logits: torch.Tensor) -> list[tuple[Seat, int]]:
        """Each seat's next token by its own settings (`sample_rows`). A row whose scores (over its
        tokenizer's ids) are not finite, or whose sampling fails, ends its job; the others are sampled."""
        if not seats:
            return []
        limit = min(s.row.vocab_limit or logits.shape[-1] for s in seats)  # rows past it are a padded head's
        # per row, one min/max pass (NaN propagates), as sample_next checks all rows at once
        finite = torch.isfinite(torch.stack(torch.aminmax(logits[:, :limit].float(), dim=-1))).all(0).tolist()
        good = []
        for b, (seat, ok) in enumerate(zip(seats, finite)):
            if ok and not seat.job.failed:
                good.append(b)
            elif not ok:
                log.error("generation failed: the model's next-token scores are NaN or infinite")
                self._fail(seat.job)
        if not good:
            return []
        rows = [seats[b].row for b in good]
        try:
            return list(zip([seats[b] for b in good], sample_rows(logits[good], rows)))
        except Exception:
            if len(good) == 1:
                log.exception("generation failed")
                self._fail(seats[good[0]].job)
                return []
        return [pair for b in good for pair in self._sample([seats[b]], logits[b : b + 1])]
