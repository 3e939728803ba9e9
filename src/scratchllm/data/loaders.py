"""Loaders: token streams -> batches of (input, target) windows for training and evaluation.

All deterministic given a seed and resumable through `state_dict()` / `load_state_dict()` (plain
tensors and numbers, so `torch.load(weights_only=True)` reads them): `RandomWindowLoader`
(nanoGPT-style random windows, for pretraining), `SlidingWindowDataset` + `SequentialLoader` (the
book's strided windows, ch. 2.6, in epochs of seeded shuffles) and `eval_batches` (fixed
non-overlapping windows for validation loss). A window of `context_length` inputs needs
`context_length + 1` tokens: the targets are the inputs shifted left by one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import torch

from scratchllm.data.tokens import TokenStream, as_stream
from scratchllm.errors import ScratchLLMError


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned host memory lets the copy overlap with compute (nanoGPT)
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScratchLLMError(f"{name} {value!r}: expected a positive integer")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ScratchLLMError(f"rank {rank!r}: expected an integer in 0..{world_size - 1}")


class RandomWindowLoader:
    """Batches of random windows, as nanoGPT's `get_batch`: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]
    for B offsets i drawn uniformly from [0, len - T). Infinite: iterate or call `next_batch()`.

    Distributed: every rank's generator is seeded with `seed`, every step draws world_size * B
    offsets, and rank r takes offsets [r*B, (r+1)*B). So ranks see different windows, and the global
    batch (ranks' batches concatenated in rank order) equals the batch of one process with
    batch_size world_size * B and the same seed.
    """

    def __init__(self, stream: TokenStream | np.ndarray, batch_size: int, context_length: int, seed: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        _check_positive(batch_size=batch_size, context_length=context_length)
        _check_rank(rank, world_size)
        self.stream = as_stream(stream)
        if len(self.stream) < context_length + 1:
            raise ScratchLLMError(f"{self.stream.name}: {len(self.stream)} tokens, fewer than one window of "
                                  f"{context_length + 1} (context_length {context_length} + 1)")
        self.batch_size, self.context_length = batch_size, context_length
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.step = 0
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.batch_size, self.context_length
        offsets = torch.randint(0, len(self.stream) - T, (self.world_size * B,), generator=self.generator)
        mine = offsets[self.rank * B:(self.rank + 1) * B].tolist()
        windows = np.stack([self.stream.window(i, T + 1) for i in mine]).astype(np.int64)  # (B, T+1)
        batch = torch.from_numpy(windows)
        self.step += 1
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each: y is x shifted left by one
        return _to_device(x.contiguous(), self.device), _to_device(y.contiguous(), self.device)

    def __iter__(self) -> RandomWindowLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Position for an exact resume (same batch_size, context_length and world_size)."""
        return {"step": self.step, "seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.generator.set_state(state["generator"])
            self.step = int(state["step"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ScratchLLMError(f"RandomWindowLoader state: expected 'step' and 'generator' from state_dict() ({exc})") from None


class SlidingWindowDataset(torch.utils.data.Dataset):
    """The book's GPTDatasetV1 (ch. 2.6): windows of `max_length` ids every `stride` ids,
    input = ids[i : i+max_length], target = ids[i+1 : i+max_length+1] for i in range(0, len - max_length, stride).
    Windows are sliced on access, not stored, so a long memmapped stream costs no memory."""

    def __init__(self, token_ids: TokenStream | np.ndarray | torch.Tensor | Sequence[int], max_length: int, stride: int):
        _check_positive(max_length=max_length, stride=stride)
        self.stream = as_stream(token_ids)
        self.max_length, self.stride = max_length, stride
        self.starts = range(0, len(self.stream) - max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.from_numpy(self.stream.window(self.starts[index], self.max_length + 1).astype(np.int64))
        return window[:-1], window[1:]  # (max_length,), (max_length,)


def _collate(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: _collate([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_collate(list(col)) for col in zip(*items))
    return torch.as_tensor(items)


class SequentialLoader:
    """Batches of a map-style dataset in epochs; with `shuffle`, each epoch is a seeded permutation.

    Iterating yields the rest of the current epoch and then moves to the next; `len()` is batches
    per epoch. `state_dict()` holds (epoch, batches done in it, generator state at the epoch's start),
    so `load_state_dict` re-draws the same permutation and resumes at the next batch exactly.

    Distributed: global batch k is positions [k*W*B, (k+1)*W*B) of the epoch's order and rank r
    takes the r-th of its W equal slices. Without drop_last the order is padded by repeating its
    first items up to a multiple of W (as torch's DistributedSampler does) so that ranks always run
    the same number of equally sized batches.
    """

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 collate_fn: Callable[[list[Any]], Any] | None = None):
        _check_positive(batch_size=batch_size)
        _check_rank(rank, world_size)
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.device = torch.device(device)
        self.collate_fn = collate_fn or _collate
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0  # batches of this epoch already yielded
        self._epoch_start_state = self.generator.get_state()
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        n, global_batch = len(self.dataset), self.batch_size * self.world_size
        if self.drop_last:
            return n // global_batch
        return math.ceil(n / global_batch) if n else 0

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            self.generator.set_state(self._epoch_start_state)
            n = len(self.dataset)
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            if not self.drop_last and self.world_size > 1 and n % self.world_size:
                pad = self.world_size - n % self.world_size
                order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
            self._order = order
        return self._order

    def _batch_indices(self, k: int) -> list[int]:
        global_batch = self.batch_size * self.world_size
        chunk = self._epoch_order()[k * global_batch:(k + 1) * global_batch]
        per_rank = len(chunk) // self.world_size
        return chunk[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()

    def __iter__(self) -> Iterator[Any]:
        batches = len(self)
        while self.position < batches:
            indices = self._batch_indices(self.position)
            self.position += 1
            batch = self.collate_fn([self.dataset[i] for i in indices])
            yield self._move(batch)
        # Epoch done: the generator has advanced past this epoch's permutation.
        self._epoch_order()
        self.epoch += 1
        self.position = 0
        self._epoch_start_state = self.generator.get_state()
        self._order = None

    def _move(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return _to_device(batch, self.device)
        if isinstance(batch, dict):
            return {k: self._move(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._move(v) for v in batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "generator": self._epoch_start_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.epoch, self.position = int(state["epoch"]), int(state["position"])
            self._epoch_start_state = state["generator"].clone()
            self.generator.set_state(self._epoch_start_state)
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise ScratchLLMError(f"SequentialLoader state: expected 'epoch', 'position' and 'generator' "
                                  f"from state_dict() ({exc})") from None
        self._order = None


def eval_batches(stream: TokenStream | np.ndarray, batch_size: int, context_length: int,
                 max_batches: int | None = None, device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic (x, y) batches of non-overlapping windows for evaluation: window j covers
    tokens [j*T, j*T + T + 1), so every token except the first is predicted exactly once. With
    `max_batches`, max_batches * batch_size windows evenly spaced over the stream are used. A
    stream shorter than one window gives a single window of all its tokens (T = len - 1)."""
    _check_positive(batch_size=batch_size, context_length=context_length)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    stream = as_stream(stream)
    T = context_length
    if len(stream) < 2:
        return
    if len(stream) < T + 1:
        T = len(stream) - 1
    n_windows = (len(stream) - 1) // T
    starts = np.arange(n_windows, dtype=np.int64) * T
    if max_batches is not None and max_batches * batch_size < n_windows:
        k = max_batches * batch_size
        starts = starts[(np.arange(k) * n_windows) // k]  # evenly spaced, distinct, starting at 0
    device = torch.device(device)
    for b in range(0, len(starts), batch_size):
        windows = np.stack([stream.window(s, T + 1) for s in starts[b:b + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(windows)  # (b, T+1)
        yield _to_device(batch[:, :-1].contiguous(), device), _to_device(batch[:, 1:].contiguous(), device)
