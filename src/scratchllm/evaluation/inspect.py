"""Pictures of what a model does: tokens, attention weights, next-token probabilities, parameters.

These sit beside evaluation in the pipeline: they look inside one forward pass instead of
averaging over a dataset. (The module is not called `inspect` so it never shadows the standard
library's module of that name.)

- `token_view`: the text with its token boundaries shown, and the ids (a first look at BPE).
- `attention_maps` / `inspect_attention`: every layer's and head's softmax attention weights for a
  text, as a grid of heat maps with the tokens on the axes (recorded by hooks on the attention
  kernels during one forward pass, with the formula of Vaswani et al. 2017, eq. 1).
- `next_token_distribution` / `inspect_next_token`: the top-k candidates for the next token.
- `plot_parameter_breakdown` / `plot_parameter_comparison`: where a model's parameters are
  (embeddings, attention, MLP, ...), for one model or several.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no display, no global
state) and written atomically. Each `plot_*` saves the Figure of its `*_figure` builder, which a
notebook can show and a test can read (what is drawn, not only that a PNG was written).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchllm.core.files import atomic_path
from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.runner import ModelSource, load_eval_model
from scratchllm.models.gpt import attention_weights
from scratchllm.tokenizer import Tokenizer

# Background colours for token boundaries in a terminal (ANSI 256-colour palette: soft pastels
# that keep black text readable), cycled token by token.
_ANSI_BACKGROUNDS = (153, 187, 224, 194, 223, 189)


# --------------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ScratchLLMError("plotting needs matplotlib: pip install 'scratchllm[plot]'") from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: str | os.PathLike[str]) -> Path:
    """Write a PNG to `out` through a temporary file, so a failed write leaves nothing half-done."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ScratchLLMError(f"out {path}: expected a .png file name")
    try:
        with atomic_path(path, "out", suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise ScratchLLMError(f"out {path}: cannot write: {exc}") from None
    return path


def _label(piece: bytes) -> str:
    """A token's bytes as a short printable label: whitespace made visible, partial UTF-8 escaped."""
    text = piece.decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


# --------------------------------------------------------------------------------------------------
# Tokens


def token_view(tokenizer: Any, text: str, color: bool = False) -> tuple[str, list[int]]:
    """(view, ids): the text with each token marked, and its token ids.

    Without colour each token is wrapped in brackets: "[Hello][,][ world]". With colour each
    token gets the next of a few ANSI background colours, so the text reads as written.
    Newlines, tabs and carriage returns are shown as \\n, \\t, \\r; bytes of a character split
    across tokens are shown as \\xNN escapes.
    """
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_spec(tokenizer)
    if not isinstance(text, str) or not text:
        raise ScratchLLMError("text: expected a non-empty string")
    ids = tokenizer.encode(text, allowed_special="all")
    pieces = [_label(tokenizer.token_bytes(i)) for i in ids]
    if color:
        view = "".join(f"\x1b[30;48;5;{_ANSI_BACKGROUNDS[k % len(_ANSI_BACKGROUNDS)]}m{p}\x1b[0m"
                       for k, p in enumerate(pieces))
    else:
        view = "".join(f"[{p}]" for p in pieces)
    return view, ids


def inspect_tokens(tokenizer: Any, text: str, color: bool = False) -> str:
    """The printable report of `token_view`: the marked text, the ids and the counts."""
    view, ids = token_view(tokenizer, text, color)
    chars, nbytes = len(text), len(text.encode("utf-8"))
    return (f"{view}\nids: {ids}\n{len(ids)} tokens, {chars} characters, {nbytes} bytes "
            f"({nbytes / len(ids):.2f} bytes/token)")


# --------------------------------------------------------------------------------------------------
# Attention


def _encode_for_model(model: Any, tokenizer: Any, text: str) -> list[int]:
    if not isinstance(text, str) or not text:
        raise ScratchLLMError("text: expected a non-empty string")
    ids = tokenizer.encode(text, disallowed_special=())
    limit = model.config.context_length
    if len(ids) > limit:
        raise ScratchLLMError(f"text: {len(ids)} tokens, more than the model's context length {limit}")
    return ids


def _select(spec: str | Sequence[int] | None, count: int, what: str) -> list[int]:
    """"all", None, "0,2" or [0, 2] -> a list of valid indices (negative ones count from the end)."""
    if spec is None or spec == "all":
        return list(range(count))
    items: Sequence[Any] = spec.split(",") if isinstance(spec, str) else spec
    chosen = []
    for item in items:
        try:
            k = int(item)
        except (TypeError, ValueError):
            raise ScratchLLMError(f"{what} {spec!r}: expected 'all' or comma-separated integers") from None
        if not -count <= k < count:
            raise ScratchLLMError(f"{what} {k}: the model has {count} {what} (0..{count - 1})")
        chosen.append(k % count)
    return chosen


@torch.no_grad()
def attention_maps(model: Any, tokenizer: Any, text: str) -> tuple[list[int], torch.Tensor]:
    """(ids, weights): the softmax attention weights of every layer and head for `text`,
    as float32 (n_layers, n_heads, T, T), row q = how query token q spreads over key tokens.

    A forward hook on each block's attention kernel (`attn.core`) takes the queries and keys the
    model attends with, and computes the weights with the formula the manual kernel uses
    (`attention_weights`); the hooks are removed afterwards."""
    ids = _encode_for_model(model, tokenizer, text)
    maps: list[torch.Tensor] = []

    def record(core: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        q, k, _, mask, causal = args  # (B, H, T, D), (B, H, S, D), v, mask, causal
        maps.append(attention_weights(q.float(), k.float(), mask, causal)[0].cpu())  # (H, T, S)

    hooks = [block.attn.core.register_forward_hook(record) for block in model.blocks]
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return ids, torch.stack(maps)  # (L, H, T, T)


def attention_figure(weights: torch.Tensor, tokens: Sequence[str], layers: Sequence[int], heads: Sequence[int],
                     title: str = ""):
    """A grid of heat maps of `weights` (n_layers, n_heads, T, T): one row per chosen layer, one column
    per chosen head; keys on x, queries on y. Returns the matplotlib Figure (`plot_attention` saves it)."""
    T = len(tokens)
    cell = max(1.6, min(0.28 * T, 6.0))  # inches per panel: readable labels, bounded size
    fig = _figure(cell * len(heads) + 1.0, cell * len(layers) + 0.8)
    grid = fig.subplots(len(layers), len(heads), squeeze=False)
    font = max(4.0, min(9.0, 180.0 / max(T, 1)))
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = grid[r][c]
            image = ax.imshow(weights[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                              interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            show_ticks = T <= 80  # beyond that the labels overlap into a black band
            ax.set_xticklabels(tokens if show_ticks and r == len(layers) - 1 else [], rotation=90, fontsize=font)
            ax.set_yticklabels(tokens if show_ticks and c == 0 else [], fontsize=font)
            ax.tick_params(length=0)
    fig.colorbar(image, ax=grid, shrink=0.6, label="attention weight")
    fig.suptitle(title or "attention weights (rows: queries, columns: keys)", fontsize=10)
    return fig


def plot_attention(weights: torch.Tensor, tokens: Sequence[str], out: str | os.PathLike[str],
                   layers: Sequence[int], heads: Sequence[int], title: str = "") -> Path:
    """`attention_figure` written to the PNG `out`."""
    return _save(attention_figure(weights, tokens, layers, heads, title), out)


def inspect_attention(model: ModelSource, text: str, out: str | os.PathLike[str], *, tokenizer: Any = None,
                      layers: str | Sequence[int] | None = "all", heads: str | Sequence[int] | None = "all",
                      device: str | None = "auto") -> dict[str, Any]:
    """Draw the attention weights of `text` (chosen layers x heads) to a PNG at `out`.

    Returns {"out", "tokens", "ids", "layers", "heads", "weights"} where weights is the float32
    (len(layers), len(heads), T, T) tensor that was plotted.
    """
    loaded = load_eval_model(model, tokenizer, device)
    model, tokenizer = loaded.module, loaded.tokenizer
    layer_ids = _select(layers, model.config.n_layers, "layers")
    head_ids = _select(heads, model.config.n_heads, "heads")
    ids, weights = attention_maps(model, tokenizer, text)
    tokens = [_label(tokenizer.token_bytes(i)) for i in ids]
    chosen = weights[layer_ids][:, head_ids]  # (len(layers), len(heads), T, T)
    path = plot_attention(weights, tokens, out, layer_ids, head_ids)
    return {"out": str(path), "tokens": tokens, "ids": ids, "layers": layer_ids, "heads": head_ids,
            "weights": chosen}


# --------------------------------------------------------------------------------------------------
# Next token


@torch.no_grad()
def next_token_distribution(model: Any, tokenizer: Any, text: str, top_k: int = 10) -> dict[str, Any]:
    """The model's distribution for the token after `text`: top-k {id, token, prob, logit},
    their total probability and the entropy of the whole distribution (nats)."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ScratchLLMError(f"top_k {top_k!r}: expected an integer >= 1")
    ids = tokenizer.encode(text, disallowed_special=()) if text else []
    ids = list(tokenizer.bos_ids) + ids if ids else tokenizer.document_start  # as a document starts
    ids = ids[-model.config.context_length:]
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0, -1].float().cpu()  # (V,)
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    top = torch.topk(probs, min(top_k, probs.numel()))
    rows = [{"id": int(i), "token": _label(tokenizer.token_bytes(int(i))) if int(i) < tokenizer.vocab_size else f"<{int(i)}>",
             "prob": float(p), "logit": float(logits[i])} for p, i in zip(top.values, top.indices)]
    return {"text": text, "context_tokens": len(ids), "top": rows, "top_prob": float(top.values.sum()),
            "entropy": float(-(probs * logprobs).nan_to_num().sum())}


def next_token_figure(result: dict[str, Any]):
    """Horizontal bars of the top-k next-token probabilities of `next_token_distribution`'s result,
    most likely on top. Returns the matplotlib Figure (`plot_next_token` saves it)."""
    rows = result["top"]
    fig = _figure(6.5, 0.35 * len(rows) + 1.2)
    ax = fig.subplots()
    labels = [repr(r["token"]) for r in rows][::-1]
    probs = [r["prob"] for r in rows][::-1]
    bars = ax.barh(range(len(rows)), probs, color="#4c72b0")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontfamily="monospace")
    ax.bar_label(bars, labels=[f"{p:.3g}" for p in probs], padding=3, fontsize=8)
    ax.set_xlim(0, min(1.0, max(probs) * 1.25 + 1e-3))
    ax.set_xlabel("probability")
    shown = result["text"] if len(result["text"]) <= 60 else "..." + result["text"][-57:]
    ax.set_title(f"next token after {shown!r}", fontsize=9)
    return fig


def plot_next_token(result: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """`next_token_figure` written to the PNG `out`."""
    return _save(next_token_figure(result), out)


def inspect_next_token(model: ModelSource, text: str, *, tokenizer: Any = None, top_k: int = 10,
                       out: str | os.PathLike[str] | None = None, device: str | None = "auto") -> dict[str, Any]:
    """Top-k next tokens after `text` (see `next_token_distribution`), with a bar chart if `out`."""
    loaded = load_eval_model(model, tokenizer, device)
    model, tokenizer = loaded.module, loaded.tokenizer
    result = next_token_distribution(model, tokenizer, text, top_k)
    if out is not None:
        result["out"] = str(plot_next_token(result, out))
    return result


def format_next_token(result: dict[str, Any]) -> str:
    """The top-k table: rank, id, token, probability, and a text bar."""
    rows = result["top"]
    width = max(5, *(len(repr(r["token"])) for r in rows))
    lines = [f"{'rank':>4}  {'id':>6}  {'token':<{width}}  {'prob':>7}"]
    for k, r in enumerate(rows, 1):
        bar = "#" * round(30 * r["prob"])
        prob = f"{r['prob']:.4f}" if r["prob"] >= 1e-3 else f"{r['prob']:.1e}"
        lines.append(f"{k:>4}  {r['id']:>6}  {repr(r['token']):<{width}}  {prob:>7}  {bar}".rstrip())
    lines.append(f"top-{len(rows)} total {result['top_prob']:.4f}, entropy {result['entropy']:.3f} nats")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Parameters


def parameter_breakdown_figure(info: dict[str, Any]):
    """Bars of parameters per group ("breakdown" of `evaluation.info.model_info`), first group on top,
    with shares. Returns the matplotlib Figure (`plot_parameter_breakdown` saves it)."""
    breakdown = info.get("breakdown")
    if not isinstance(breakdown, dict) or not breakdown:
        raise ScratchLLMError("info: expected a 'breakdown' dict of parameter counts per group")
    groups = list(breakdown)
    counts = [int(breakdown[g]) for g in groups]
    total = sum(counts) or 1
    fig = _figure(7.0, 0.45 * len(groups) + 1.4)
    ax = fig.subplots()
    bars = ax.barh(range(len(groups))[::-1], counts, color="#55a868")
    ax.set_yticks(range(len(groups))[::-1])
    ax.set_yticklabels(groups)
    tied = bool(info.get("config", {}).get("tie_embeddings"))
    notes = [f"{_count(n)}  {100 * n / total:.1f}%" + ("  (tied to the token embedding)" if g == "head" and tied and not n else "")
             for g, n in zip(groups, counts)]
    ax.bar_label(bars, labels=notes, padding=3, fontsize=8)
    ax.set_xlim(0, max(counts) * 1.35 + 1)
    ax.set_xlabel("parameters")
    ax.set_title(f"{info.get('model', 'model')}: {_count(sum(counts))} parameters", fontsize=10)
    return fig


def plot_parameter_breakdown(info: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """`parameter_breakdown_figure` written to the PNG `out`."""
    return _save(parameter_breakdown_figure(info), out)


def _count(n: float) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(int(n)) if math.isfinite(n) else str(n)


def parameter_comparison_figure(infos: list[dict[str, Any]]):
    """Two panels for several models (`info --compare`), first model on top: total parameters on a log
    scale (so GPT-2 small and GPT-3 175B fit on one chart), and each model's split into groups as
    shares. Returns the matplotlib Figure (`plot_parameter_comparison` saves it)."""
    if not infos:
        raise ScratchLLMError("info --compare: expected at least one model")
    names = [i["model"] for i in infos]
    totals = [sum(i["breakdown"].values()) for i in infos]
    fig = _figure(11.0, 0.45 * len(infos) + 1.8)
    ax_total, ax_share = fig.subplots(1, 2)
    rows = range(len(infos))[::-1]
    bars = ax_total.barh(rows, totals, color="#4c72b0")
    ax_total.bar_label(bars, labels=[_count(t) for t in totals], padding=3, fontsize=8)
    ax_total.set_xscale("log")
    ax_total.set_xlim(min(totals) * 0.5, max(totals) * 20)
    ax_total.set_yticks(list(rows))
    ax_total.set_yticklabels(names, fontsize=8)
    ax_total.set_xlabel("parameters (log scale)")
    left = [0.0] * len(infos)
    for g, colour in zip(infos[0]["breakdown"], ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")):
        share = [100.0 * i["breakdown"][g] / t for i, t in zip(infos, totals)]
        ax_share.barh(rows, share, left=left, label=g, color=colour)
        left = [a + b for a, b in zip(left, share)]
    ax_share.set_yticks(list(rows))
    ax_share.set_yticklabels([])
    ax_share.set_xlim(0, 100)
    ax_share.set_xlabel("share of parameters (%)")
    ax_share.legend(fontsize=7, loc="lower right", ncol=5, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Parameters per model", fontsize=10)
    fig.tight_layout()
    return fig


def plot_parameter_comparison(infos: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """`parameter_comparison_figure` written to the PNG `out`."""
    return _save(parameter_comparison_figure(infos), out)
