"""Decoding with a static key/value cache, each step replayed as one CUDA graph on a GPU.

Eager decoding (`generation._decode` with a `KVCache`) launches every kernel of every layer from
Python for each new token, about a dozen per block: on a GPU a step is then bound by those launches
(several microseconds each), not by the GPU's work (GPT-2 small reads 250 MB of bf16 weights per
token, ~50 us at an H200's 4.8 TB/s). A CUDA graph records the kernels of one step once and
replays them with a single launch (`torch.cuda.graph`; the idea behind gpt-fast's and
`torch.compile(mode="reduce-overhead")`'s decoding), which needs every tensor the step touches at a
fixed address with a fixed shape:

- the cache is allocated once for L positions per layer, (B, K, L, D); a step writes its key and
  value at a position held in a tensor (`index_copy_`), not at a Python slice;
- attention reads all L positions under a mask (B, 1, 1, L) of the filled, real ones (left padding
  excluded), which the step itself extends by its new position;
- each row's position id is counted from that mask, as `GPT.hidden_states` counts it from the
  padding mask.

The prompt, and each re-fill when the context window jumps, is prefilled eagerly into the same
buffers (its length varies, and it is one large pass anyway), so one captured graph serves the
whole generation. `StaticDecoder.step` runs the same Python with or without the graph: on a CPU it
runs eagerly (that is how it is tested against eager decoding), on CUDA it is captured at the first
step; a capture that fails warns once and leaves the step eager.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass

import torch

from scratchllm.models.gpt import GPT, KVCache


@dataclass
class StaticKVCache(KVCache):
    """A KVCache whose decode steps write at a tensor position and return the whole buffers.

    step_position: (1,) int64 on the cache's device while a static step runs; None during a prefill,
    which writes slices [length, length + T) as KVCache does."""

    step_position: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step_position is None:
            return super().update(layer, k, v)
        keys, values = self.keys[layer], self.values[layer]  # (B, K, L, D)
        keys.index_copy_(2, self.step_position, k.to(keys.dtype))  # k: (B, K, 1, D) at the step's position
        values.index_copy_(2, self.step_position, v.to(values.dtype))
        return keys, values


class StaticDecoder:
    """Decoding state of `batch_size` rows and `max_len` cache positions, at fixed addresses.

    prefill(idx, pad) fills positions [0, W) and returns the last position's logits (B, V); then each
    step(next_ids) appends one token per row and returns the next logits. `length` counts the filled
    positions; a caller re-fills before it reaches max_len. graph=True captures the step as a CUDA
    graph at the first step (CUDA devices only; elsewhere the flag is ignored).
    """

    def __init__(self, model: GPT, batch_size: int, max_len: int, graph: bool = True):
        weight = model.tok_emb.weight
        device = weight.device
        self.model = model
        self.cache = StaticKVCache.allocate(model.config, batch_size, max_len, device, weight.dtype)
        for buffer in (*self.cache.keys, *self.cache.values):
            buffer.zero_()  # masked positions get weight 0, but 0 * NaN (uninitialised memory) would be NaN
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # filled, real positions
        self.idx = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # the step's input ids
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the cache position it writes
        self.length = 0
        self.use_graph = graph and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output (B, V), rewritten by each replay

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def prefill(self, idx: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """Windows idx (B, W), left-padded where pad (B, W) is 0 (None: no padding) -> logits (B, V)."""
        self.cache.step_position = None
        self.cache.length = 0
        h = self.model.hidden_states(idx, cache=self.cache, attention_mask=pad)  # (B, W, C)
        width = idx.shape[1]
        self.valid.zero_()
        self.valid[:, :width] = True if pad is None else pad.bool()
        self.length = width
        return self.model.logits(h[:, -1])

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Append next_ids (B,), on the model's device, at position `length` -> logits (B, V).

        The returned tensor is the graph's output buffer when a graph runs: read it before the next step."""
        self.idx.copy_(next_ids.view(-1, 1))
        self.position.fill_(self.length)
        if self.use_graph and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._step()
        self.length += 1
        return logits

    def _step(self) -> torch.Tensor:
        """One token per row from self.idx at cache position self.position: logits (B, V)."""
        self.valid.index_fill_(1, self.position, True)
        position_ids = self.valid.sum(-1, keepdim=True) - 1  # (B, 1): real tokens before this one
        mask = self.valid[:, None, None, :]  # (B, 1, 1, L): True = may attend
        self.cache.step_position = self.position
        try:
            h = self.model.transformer(self.idx, position_ids, mask, self.cache)  # (B, 1, C)
        finally:
            self.cache.step_position = None
        return self.model.logits(h[:, -1])

    def _capture(self) -> None:
        """Record `_step` as a CUDA graph: warm-up runs on a side stream first (kernel selection,
        allocator), as torch.cuda.graph requires. They write the position the next real step
        rewrites, so no filled position changes. On failure, warn and stay eager."""
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits = self._step()
            self.graph = graph
        except RuntimeError as exc:  # an operation that cannot be captured: decode eagerly instead
            self.use_graph = False
            self.graph = self.logits = None
            torch.cuda.synchronize()
            warnings.warn(f"CUDA graph capture of the decode step failed ({str(exc).splitlines()[0]}); "
                          "decoding without it", stacklevel=2)


# ------------------------------------------------------------------------------------------------
# One decoder kept per model, so that repeated generations reuse its buffers and graph


_KEPT: weakref.WeakKeyDictionary[GPT, tuple[tuple, StaticDecoder]] = weakref.WeakKeyDictionary()
_BUSY: set[int] = set()  # ids of decoders some decode loop is using
_LOCK = threading.Lock()


def _fingerprint(model: GPT) -> tuple:
    """Address, dtype and shape of every parameter and buffer: a graph reads weights where they were
    at capture, so a model whose tensors moved (`.to()`, new parameters) needs a new one. In-place
    updates (training steps, load_state_dict) keep addresses, and the graph sees the new values."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors)


def acquire_decoder(model: GPT, batch_size: int, max_len: int, graph: bool = True) -> StaticDecoder:
    """A StaticDecoder for `model` with these dimensions: the one kept from an earlier generation
    when it fits and no other decode loop is using it, else a new one (then kept, if small). Pair
    with `release_decoder`."""
    key = (batch_size, max_len, graph, _fingerprint(model))
    with _LOCK:
        kept = _KEPT.get(model)
        if kept is not None and kept[0] == key and id(kept[1]) not in _BUSY:
            decoder = kept[1]
        else:
            decoder = StaticDecoder(model, batch_size, max_len, graph)
            if (kept is None or id(kept[1]) not in _BUSY) and _small(decoder):
                _KEPT[model] = (key, decoder)  # one per model: the newest, unless the old one is in use
        _BUSY.add(id(decoder))
    return decoder


def _small(decoder: StaticDecoder) -> bool:
    """Whether keeping `decoder` after its generation costs little: on a GPU, a cache of at most
    1/32 of the device's memory (GPT-2 small's for 8 rows of 1,024 positions in bf16 is 300 MB, a
    Llama-2-7B's for one row of 4,096 positions 2 GB); a larger one is freed with its generation."""
    device = decoder.idx.device
    if device.type != "cuda":
        return True
    nbytes = sum(t.numel() * t.element_size() for t in (*decoder.cache.keys, *decoder.cache.values))
    return nbytes <= torch.cuda.get_device_properties(device).total_memory // 32


def kept_decoder(model: GPT) -> StaticDecoder | None:
    """The decoder kept for `model` from its latest static generation, if any."""
    with _LOCK:
        kept = _KEPT.get(model)
    return kept[1] if kept is not None else None


def release_decoder(decoder: StaticDecoder | None) -> None:
    """Let a later generation reuse `decoder`."""
    if decoder is not None:
        with _LOCK:
            _BUSY.discard(id(decoder))
