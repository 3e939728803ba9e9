"""The key/value cache of the server's continuous batch (engine.py `BatchEngine`): one row of keys and
values per decoding sequence, each row filling its own positions from 0.

Positions then need no padding (a row's position ids are its cache positions), and a row can leave
or join without touching the others. The decoding rows occupy rows 0..B-1 of the buffers, so that a
step reads them as one view (`RowsStep`), not a gathered copy: the engine moves the last row into the
place of one that leaves.
"""

from __future__ import annotations

import torch

from scratchllm.models.gpt import GPT, KVCache


class RowCaches:
    """Keys and values of up to `rows` decoding rows, (rows, K, L, D) per layer, each row with its own
    length: row b holds its window's first `length` positions at [b, :, :length]. L grows as rows
    get longer (up to the context), so a server of short answers holds a short cache."""

    def __init__(self, model: GPT, rows: int, length: int = 256):
        weight = model.tok_emb.weight
        self.config, self.rows = model.config, rows
        empty = KVCache.allocate(model.config, rows, min(length, model.config.context_length), weight.device, weight.dtype)
        self.keys, self.values = empty.keys, empty.values
        for buffer in (*self.keys, *self.values):
            buffer.zero_()  # masked positions get weight 0, but 0 * NaN (uninitialised memory) would be NaN

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, positions: int) -> None:
        """Room for `positions` positions per row: double L (at most to the context) when short."""
        if positions <= self.length:
            return
        longer = min(self.config.context_length, max(positions, 2 * self.length))
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = old.new_zeros(old.shape[0], old.shape[1], longer, old.shape[3])
                new[:, :, : old.shape[2]] = old
                buffers[i] = new

    def put(self, row: int, cache: KVCache, length: int) -> None:
        """Copy the first `length` positions of a one-row cache (a prefill's) into row `row`."""
        self.reserve(length + 1)
        for mine, theirs in ((self.keys, cache.keys), (self.values, cache.values)):
            for buffer, source in zip(mine, theirs):
                buffer[row, :, :length] = source[0, :, :length]

    def move(self, source: int, target: int, length: int) -> None:
        """Row `source`'s first `length` positions into row `target`."""
        for buffer in (*self.keys, *self.values):
            buffer[target, :, :length] = buffer[source, :, :length]

    def clear(self, row: int, length: int) -> None:
        """Zero a row's first `length` positions (a row that left may have held NaN: see __init__)."""
        for buffer in (*self.keys, *self.values):
            buffer[row, :, :length] = 0

    def step(self, first: int, positions: torch.Tensor, span: int) -> "RowsStep":
        return RowsStep(self, first, positions, span)


class RowsStep:
    """The cache of one decode step over rows first..first+B-1 of `RowCaches`: row b writes its new
    key and value at its own position positions[b] and reads its positions 0..positions[b] (the step's
    mask hides the rest), through the `update` that `Attention` calls."""

    def __init__(self, caches: RowCaches, first: int, positions: torch.Tensor, span: int):
        self.caches, self.first, self.positions = caches, first, positions  # positions: (B,) int64
        B = positions.shape[0]
        self.rows = torch.arange(first, first + B, device=positions.device)
        self.span = span  # S: the longest row's positions, the new one included (positions.max() + 1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, K, 1, D) -> every row's keys and values (B, K, S, D)."""
        keys, values = self.caches.keys[layer], self.caches.values[layer]
        keys[self.rows, :, self.positions] = k[:, :, 0].to(keys.dtype)  # (B, K, D) at (row, position) pairs
        values[self.rows, :, self.positions] = v[:, :, 0].to(values.dtype)
        last = self.first + self.rows.shape[0]
        return keys[self.first : last, :, : self.span], values[self.first : last, :, : self.span]
