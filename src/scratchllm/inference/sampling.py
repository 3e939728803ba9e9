"""Choosing the next token: where a model's logits become a distribution and a token is drawn from it
(`sample_next`: greedy, temperature, top-k, top-p), and one seeded generator per batch row. Every decode
path (generation.py's eager loop, static_decode.py's CUDA-graph loop, batches of either, the server's
continuous batch in engine.py) chooses its tokens here, each row by its own `SamplingConfig` and
generator (rows.py `sample_rows`), so a rule that must hold for every sampled token lives here: rows
of the head beyond the tokenizer's vocabulary (`vocab_limit`; Qwen2.5 pads its 151,665 tokens to
151,936 rows) are never chosen. The sampling settings and their checks are config.py's `SamplingConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import GREEDY_BELOW, check_seed


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """Next token of each row of logits (B, V) -> (B,) int64, an id below `vocab_limit` (the tokenizer's
    size) when it is given.

    temperature == 0 (or below GREEDY_BELOW) is greedy (argmax). Otherwise the logits are divided by
    the temperature and softmaxed; top_k keeps the k most likely tokens (Fan et al. 2018; ties at the k-th value are
    all kept); top_p keeps the nucleus, the smallest set of most likely tokens whose probability
    sums to >= top_p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"); one
    token is then drawn from what is left. `generators` has one torch.Generator per row (None: the
    global RNG), so a row's draws never depend on the other rows of the batch. Scores that are NaN
    or infinite (a model whose weights are) are a one-line error.

    Rows of the head at or past `vocab_limit` are padding: a config's vocab_size rounded up for fast
    matrix shapes (Qwen2.5: 151,936 rows for 151,665 tokens). They have no token, so they are cut off
    here, where every decode path chooses its tokens, before greedy or sampled choice; ids below the
    limit keep their numbers.
    """
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = logits[:, :vocab_limit]  # (B, V) -> (B, vocab_limit)
    logits = logits.float()  # exact for bfloat16 logits, and argmax is 4x faster in float32
    if not torch.isfinite(torch.stack(torch.aminmax(logits))).all():  # one pass, NaN propagating: 1/6 of isfinite's cost
        raise ScratchLLMError("the model's next-token scores are NaN or infinite: its weights hold non-finite values "
                              "(a diverged or corrupt checkpoint)")
    if temperature < GREEDY_BELOW:
        return logits.max(dim=-1).indices  # argmax (the first of equal maxima too), in a third of argmax's time
    logits = logits / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
        # Drop a token when the more likely tokens before it already reach top_p; what stays is
        # the smallest prefix of the sorted list with mass >= top_p (never empty).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays (a top_p below float32's range is 0)
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)  # multinomial renormalises each row
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def make_generators(seed: int | None, n: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One RNG per batch row: row i is seeded with seed + i.

    So `generate(prompts, seed=s)[i] == generate(prompts[i], seed=s + i)`: what a prompt samples
    does not depend on which other prompts share its batch. With seed=None a base seed is drawn
    from torch's global RNG, so `torch.manual_seed` still makes a run reproducible.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    check_seed(seed, n)
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]
