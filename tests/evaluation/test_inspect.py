"""Tests for inspect_model.py: token boundaries, attention heat maps, next-token bars, parameter chart.

The attention weights drawn must be the model's own: each row a probability distribution, causal
(zero above the diagonal), and equal to a recomputation from the weights by hand.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from scratchllm.evaluation import inspect as im
from scratchllm.checkpoint import save_model
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT
from scratchllm.tokenizer import Tokenizer
from tests.helpers import drawn_bars

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def gpt2_tok() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    # std 0.3 instead of GPT-2's 0.02 so attention is far from uniform and the check has teeth
    m = GPT(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=2, n_heads=4)).eval()
    with torch.no_grad():
        for block in m.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.3)
    return m


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("inspect") / "model")


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000


def manual_attention(model: GPT, ids: list[int]) -> torch.Tensor:
    """(L, H, T, T) softmax(q k^T / sqrt(D)) with a causal mask, recomputed from the weights."""
    T, H, D = len(ids), model.config.n_heads, model.config.head_dim
    with torch.no_grad():
        x = model.tok_emb(torch.tensor([ids])) + model.pos_emb(torch.arange(T))[None]  # (1, T, C)
        maps = []
        for block in model.blocks:
            q, k, _ = block.attn.qkv(block.norm1(x)).split(model.config.emb_dim, dim=2)
            q = q.view(1, T, H, D).transpose(1, 2)  # (1, H, T, D)
            k = k.view(1, T, H, D).transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (1, H, T, T)
            scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
            maps.append(torch.softmax(scores, dim=-1)[0])
            x = block(x)
    return torch.stack(maps)


# --------------------------------------------------------------------------------------------------
# Tokens


def test_token_view_brackets_and_ids(gpt2_tok):
    view, ids = im.token_view(gpt2_tok, "Hello, world")
    assert view == "[Hello][,][ world]" and ids == [15496, 11, 995]
    view, ids = im.token_view(gpt2_tok, "a\tb\n🤗")
    assert view == "[a][\\t][b][\\n][\\xf0\\x9f][\\xa4][\\x97]"  # a split character shows its bytes
    assert ids == [64, 197, 65, 198, 8582, 97, 245]


def test_token_view_colours_keep_the_text(gpt2_tok):
    view, ids = im.token_view(gpt2_tok, "Hello, world", color=True)
    assert re.sub(r"\x1b\[[0-9;]*m", "", view) == "Hello, world"
    assert view.count("\x1b[0m") == len(ids) == 3
    assert len(set(re.findall(r"48;5;(\d+)m", view))) == 3  # neighbours differ


@pytest.mark.parametrize("color, expect_ansi", [("never", False), ("always", True), ("auto", False)])
def test_inspect_tokens_cli(capsys, color, expect_ansi):
    assert main(["inspect", "tokens", "--tokenizer", "gpt2", "--text", "Hello, world", "--color", color]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("\x1b[" in out[0]) == expect_ansi  # capsys is not a terminal: auto means brackets
    if not expect_ansi:
        assert out[0] == "[Hello][,][ world]"
    assert out[1] == "ids: [15496, 11, 995]"
    assert out[2] == "3 tokens, 12 characters, 12 bytes (4.00 bytes/token)"


# --------------------------------------------------------------------------------------------------
# Attention


def test_attention_weights_are_the_models(tmp_path, model, gpt2_tok):
    result = im.inspect_attention(model, TEXT, tmp_path / "att.png", tokenizer=gpt2_tok)
    assert_png(tmp_path / "att.png")
    w = result["weights"]  # (L, H, T, T): what was drawn
    T = len(result["ids"])
    assert w.shape == (2, 4, T, T) and result["ids"] == gpt2_tok.encode(TEXT)
    assert result["tokens"] == ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog"]
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, T), atol=1e-6)  # rows are distributions
    assert torch.all(w.triu(1) == 0)  # causal: no query sees a later key
    torch.testing.assert_close(w, manual_attention(model, result["ids"]), atol=1e-6, rtol=1e-5)
    assert w.max() > 0.5 and w[:, :, -1].min() < 0.05  # far from uniform, so the comparison has teeth
    assert not any(b.attn.core._forward_hooks for b in model.blocks)  # the hooks are removed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_maps_are_what_grouped_rotary_normed_attention_used(gpt2_tok, dtype):
    """With grouped-query attention, RoPE and query/key norms (and in bfloat16 on a CPU), the maps
    times the values are exactly what each attention kernel returned in the same forward pass."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       qk_norm=True, position="rope", norm="rmsnorm", mlp="swiglu", attn_impl="manual")
    model = GPT(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0.0, 0.3)
    model.to(dtype)
    calls = []  # (v, output) of each kernel call
    hooks = [b.attn.core.register_forward_hook(lambda m, args, out: calls.append((args[2], out))) for b in model.blocks]
    ids, w = im.attention_maps(model, gpt2_tok, TEXT)
    for h in hooks:
        h.remove()
    assert w.shape == (2, 4, 9, 9) and w.dtype == torch.float32 and torch.all(w.triu(1) == 0)
    assert not torch.equal(w[:, 0], w[:, 1])  # heads sharing a key/value head still attend differently
    for layer, (v, out) in enumerate(calls):
        # the kernel attends in float32 on a CPU and returns the model's dtype
        torch.testing.assert_close((w[layer] @ v[0].float()).to(dtype), out[0], atol=1e-6, rtol=1e-5)


def test_attention_layer_and_head_selection(tmp_path, model, gpt2_tok):
    result = im.inspect_attention(model, TEXT, tmp_path / "a.png", tokenizer=gpt2_tok, layers="1", heads="0,-1")
    full = manual_attention(model, result["ids"])
    assert result["layers"] == [1] and result["heads"] == [0, 3]
    torch.testing.assert_close(result["weights"], full[[1]][:, [0, 3]], atol=1e-6, rtol=1e-5)
    assert_png(tmp_path / "a.png")


def test_attention_figure_draws_each_chosen_layer_and_head(model, gpt2_tok):
    """Panel (row r, column c) is layer layers[r], head heads[c]: its pixels are that head's weights
    (queries down, keys across), the tokens on both axes of the outer panels."""
    ids, w = im.attention_maps(model, gpt2_tok, TEXT)
    tokens = [gpt2_tok.decode([i]) for i in ids]
    layers, heads = [1, 0], [3, 0, 2]
    fig = im.attention_figure(w, tokens, layers, heads)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]  # not the colour bar
    chosen = list(itertools.product(layers, heads))
    assert [ax.get_title() for ax in panels] == [f"layer {layer}, head {head}" for layer, head in chosen]
    for k, (ax, (layer, head)) in enumerate(zip(panels, chosen)):
        assert torch.equal(torch.as_tensor(ax.images[0].get_array()), w[layer, head])
        row, column = divmod(k, len(heads))
        x_labels = [t.get_text() for t in ax.get_xticklabels()]
        y_labels = [t.get_text() for t in ax.get_yticklabels()]
        assert x_labels == (tokens if row == len(layers) - 1 else [""] * len(tokens))
        assert y_labels == (tokens if column == 0 else [""] * len(tokens))


def test_attention_cli_writes_png(tmp_path, capsys, model_dir):
    out = tmp_path / "att.png"
    rc = main(["inspect", "attention", "--model", str(model_dir), "--text", TEXT, "--out", str(out),
               "--layers", "0,1", "--heads", "all", "--device", "cpu"])
    assert rc == 0 and capsys.readouterr().out == f"wrote {out}: 2 layer(s) x 4 head(s), 9 tokens\n"
    assert_png(out)


@pytest.mark.parametrize("option, value, message", [
    ("--layers", "2", "layers 2: the model has 2 layers (0..1)"),
    ("--heads", "x", "heads 'x': expected 'all' or comma-separated integers"),
    ("--text", " ".join(["word"] * 80), "text: 80 tokens, more than the model's context length 64"),
    ("--out", "att.jpg", "expected a .png file name"),
])
def test_attention_bad_input_exit_2(tmp_path, capsys, model_dir, option, value, message):
    args = {"--text": TEXT, "--out": "att.png", option: value}
    args["--out"] = str(tmp_path / args["--out"])
    rc = main(["inspect", "attention", "--model", str(model_dir), "--device", "cpu",
               *[x for pair in args.items() for x in pair]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("scratchllm inspect: error: ") and err.count("\n") == 1
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# --------------------------------------------------------------------------------------------------
# Next token


def test_next_token_probabilities_are_the_softmax_of_the_logits(tmp_path, model, gpt2_tok):
    text = "Hello, my name is"
    result = im.inspect_next_token(model, text, tokenizer=gpt2_tok, top_k=7, out=tmp_path / "bars.png")
    with torch.no_grad():
        logits = model(torch.tensor([gpt2_tok.encode(text)]))[0, -1]
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, 7)
    assert [r["id"] for r in result["top"]] == top.indices.tolist()
    assert [r["prob"] for r in result["top"]] == pytest.approx(top.values.tolist(), abs=1e-7)
    assert [r["token"] for r in result["top"]] == [gpt2_tok.decode([i]) for i in top.indices.tolist()]
    assert result["top_prob"] == pytest.approx(sum(r["prob"] for r in result["top"])) and result["top_prob"] <= 1.0
    assert result["entropy"] == pytest.approx(float(-(probs * probs.log()).sum()), rel=1e-5)
    assert result["context_tokens"] == 5
    assert_png(tmp_path / "bars.png")


def test_next_token_figure_draws_the_top_k_most_likely_on_top(model, gpt2_tok):
    result = im.next_token_distribution(model, gpt2_tok, "Hello, my name is", top_k=5)
    drawn = drawn_bars(im.next_token_figure(result).axes[0])
    assert drawn == [(repr(r["token"]), pytest.approx(r["prob"])) for r in result["top"]]
    assert [p for _, p in drawn] == sorted((p for _, p in drawn), reverse=True)


def test_next_token_cli_table(tmp_path, capsys, model_dir):
    out = tmp_path / "bars.png"
    rc = main(["inspect", "next-token", "--model", str(model_dir), "--text", "Hello", "--top-k", "3",
               "--out", str(out), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 5 and lines[0].split() == ["rank", "id", "token", "prob"]
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
    assert lines[4].startswith("top-3 total ")
    assert_png(out)


# --------------------------------------------------------------------------------------------------
# Parameter breakdown


def test_info_out_draws_the_parameter_breakdown(tmp_path, capsys):
    out = tmp_path / "params.png"
    assert main(["info", "--model", "gpt-tiny", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("model: gpt-tiny") and f"wrote {out}" in captured.err
    assert_png(out)


def test_parameter_breakdown_figure_draws_each_group_with_its_count():
    from scratchllm.evaluation.info import model_info

    info = model_info("gpt-tiny")
    ax = im.parameter_breakdown_figure(info).axes[0]
    assert drawn_bars(ax) == list(info["breakdown"].items())  # in the breakdown's order, first on top
    total = sum(info["breakdown"].values())
    shares = [t.get_text().split()[1] for t in ax.texts]  # the bar labels: "1.2M  31.0%"
    assert shares == [f"{100 * n / total:.1f}%" for n in info["breakdown"].values()]
    assert ax.get_title() == f"gpt-tiny: {total / 1e6:.3g}M parameters"


def test_plot_parameter_breakdown_rejects_a_missing_breakdown(tmp_path):
    with pytest.raises(Exception, match="expected a 'breakdown' dict"):
        im.plot_parameter_breakdown({"model": "x"}, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
