"""Tests for scratchllm.generation: sampling rules, the KV-cache decode loop, batching, the sliding
context window, streaming text and stop strings, on small random GPTs and GPT-2's tokenizer."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import (
    TextAssembler,
    generate,
    generate_ids,
    generate_tokens,
    make_generators,
    sample_next,
    stream,
    window_start,
)
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT, KVCache
from scratchllm.tokenizer import Tokenizer
from tests.helpers import sharpened_gpt


def random_gpt(tok: Tokenizer, seed: int = 0, sharpen: float = 10.0, **overrides) -> GPT:
    return sharpened_gpt(tok.vocab_size, seed, sharpen, **overrides)


@pytest.fixture(scope="module")
def model(tok) -> GPT:
    return random_gpt(tok)


@pytest.fixture(scope="module")
def small_ctx(tok) -> GPT:
    """A 32-token context, so 60-100 new tokens run past it several times."""
    return random_gpt(tok, seed=1, context_length=32)


def reference_greedy(model: GPT, ids: list[int], n: int, keep: int) -> list[int]:
    """The window rule written out: each step runs the model on tokens[window_start(n):n]."""
    ctx = model.config.context_length
    tokens = list(ids)
    with torch.no_grad():
        for _ in range(n):
            s = window_start(len(tokens), ctx, keep)
            logits = model(torch.tensor([tokens[s:]]))[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens[len(ids):]


def bigram_gpt(tok: Tokenizer, chain: dict[int, int]) -> GPT:
    """A real GPT whose greedy next token depends only on the current token: chain[a] = b.

    Attention and MLP outputs are zeroed and positions removed, so the final hidden state is
    LayerNorm(embedding of the current token); the untied head row of b is 10x that vector for
    each a -> b, and random 64-d vectors are nearly orthogonal, so b wins by a wide margin.
    """
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=tok.vocab_size, tie_embeddings=False)).eval()
    with torch.no_grad():
        for block in gpt.blocks:
            for lin in (block.attn.proj, block.mlp.proj):
                lin.weight.zero_()
                lin.bias.zero_()
        gpt.pos_emb.weight.zero_()
        gpt.out_head.weight.zero_()
        for a, b in chain.items():
            gpt.out_head.weight[b] += 10 * gpt.final_norm(gpt.tok_emb.weight[a])
    return gpt


def scripted_gpt(tok: Tokenizer, prompt: str, script: list[int]) -> GPT:
    """Greedy decoding after `prompt` emits `script` and then <|endoftext|>."""
    last = tok.encode(prompt)[-1]
    chain = dict(zip([last, *script], [*script, tok.eot_id]))
    assert len(chain) == len(script) + 1, "script tokens must be distinct"
    return bigram_gpt(tok, chain)


# ------------------------------------------------------------------------------------------------
# the window rule


def test_window_start_values():
    # ctx 8, keep 6: period 3; the window is the whole sequence up to 8 tokens, then 6, 7, 8, 6, ...
    assert [window_start(n, 8, 6) for n in range(1, 16)] == [0] * 8 + [3, 3, 3, 6, 6, 6, 9]
    assert [window_start(n, 8, 8) for n in range(7, 12)] == [0, 0, 1, 2, 3]  # keep = ctx slides by one
    assert [window_start(n, 8, 1) for n in range(8, 19)] == [0, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16]


@pytest.mark.parametrize("keep", [1, 5, 24, 31, 32])
def test_window_start_invariants(keep):
    ctx, previous = 32, 0
    for n in range(1, 300):
        s = window_start(n, ctx, keep)
        assert 1 <= n - s <= ctx and s >= previous
        if s != previous:  # each jump restarts from exactly `keep` tokens
            assert n - s == keep
        previous = s


# ------------------------------------------------------------------------------------------------
# sampling


def test_sample_next_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2, 1)  # (2, 4)
    gens = make_generators(0, 2)

    def drawn(**kw):
        return {int(t) for _ in range(300) for t in sample_next(logits, generators=gens, **kw)}

    assert drawn() == {0, 1, 2, 3}
    assert drawn(top_k=2) == {0, 1}
    assert drawn(top_p=0.45) == {0}  # the smallest set with mass >= top_p
    assert drawn(top_p=0.75) == {0, 1}
    assert drawn(top_p=0.9) == {0, 1, 2}
    assert drawn(top_k=3, top_p=0.99) == {0, 1, 2}
    assert sample_next(logits, temperature=0).tolist() == [0, 0]


def test_sample_next_per_row_generators_are_independent():
    logits = torch.zeros(3, 1000)
    a = sample_next(logits, generators=make_generators(5, 3))
    b = sample_next(logits[1:], generators=make_generators(6, 2))  # rows 1, 2 of seed 5 = rows 0, 1 of seed 6
    assert a[1:].tolist() == b.tolist()


def test_greedy_limits_of_sampling(tok, model):
    greedy = generate(model, tok, "Once upon a time", 30, temperature=0)
    assert generate(model, tok, "Once upon a time", 30, temperature=1.3, top_k=1, seed=3) == greedy
    assert generate(model, tok, "Once upon a time", 30, temperature=0.9, top_p=1e-6, seed=4) == greedy


def test_seed_reproducibility(tok, model):
    a = generate(model, tok, "Hello", 25, temperature=1.0, seed=11)
    assert generate(model, tok, "Hello", 25, temperature=1.0, seed=11) == a
    assert generate(model, tok, "Hello", 25, temperature=1.0, seed=12) != a
    torch.manual_seed(7)
    b = generate(model, tok, "Hello", 25, temperature=1.0)  # seed=None: drawn from torch's RNG
    torch.manual_seed(7)
    assert generate(model, tok, "Hello", 25, temperature=1.0) == b


# ------------------------------------------------------------------------------------------------
# the KV cache and the context window


@pytest.mark.parametrize("keep", [1, 8, 24, 31, 32])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cache_matches_recompute_past_the_window(tok, small_ctx, keep, temperature):
    ids = tok.encode("The history of the world, in brief:")
    kw = dict(max_new_tokens=90, temperature=temperature, keep=keep)
    cached = list(generate_tokens(small_ctx, ids, generator=make_generators(3, 1)[0], **kw))
    uncached = list(generate_tokens(small_ctx, ids, generator=make_generators(3, 1)[0], use_cache=False, **kw))
    assert len(cached) == 90 and cached == uncached
    if temperature == 0:
        assert cached == reference_greedy(small_ctx, ids, 90, keep)


def test_keep_changes_what_the_model_sees(tok, small_ctx):
    ids = tok.encode("The history of the world, in brief:")
    runs = {keep: generate_ids(small_ctx, [ids], 90, temperature=0, keep=keep)[0] for keep in (1, 31)}
    assert runs[1][: 32 - len(ids) + 1] == runs[31][: 32 - len(ids) + 1]  # same until the first jump
    assert runs[1] != runs[31]


def test_cache_matches_recompute_within_the_context(tok, model):
    for t in (0.0, 0.8):
        a = generate(model, tok, "In the beginning", 40, temperature=t, top_k=50, seed=2)
        assert generate(model, tok, "In the beginning", 40, temperature=t, top_k=50, seed=2, use_cache=False) == a


def test_bfloat16_decoding(tok):
    """bfloat16 single-sequence steps switch oneDNN off for their matmuls and back on afterwards."""
    gpt = random_gpt(tok, seed=3).to(torch.bfloat16)
    ids = tok.encode("Half precision")
    cached = generate_ids(gpt, [ids], 20, 0)
    assert torch.backends.mkldnn.enabled
    assert cached == generate_ids(gpt, [ids], 20, 0, use_cache=False)


def test_bfloat16_decoding_follows_float32(tok):
    """The bfloat16 cached decode against the float32 model: fed the float32 model's own greedy
    tokens (48 of them, varied), each bfloat16 step's logits stay within bfloat16 rounding of
    float32's, and the next token they pick is float32's at least 90% of the time."""
    fp32 = random_gpt(tok, seed=3)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    ids = tok.encode("Half precision decoding")
    tokens = generate_ids(fp32, [ids], 48, 0)[0]
    assert len(set(tokens)) >= 10
    full = torch.tensor([ids + tokens])
    with torch.no_grad():
        want = fp32(full)[0, len(ids) - 1:-1].float()  # (48, V): the logits that chose each token
        cache = KVCache.allocate(bf16.config, 1, full.shape[1], "cpu", torch.bfloat16)
        h = bf16.hidden_states(full[:, :len(ids)], cache=cache)
        steps = [bf16.out_head(h[:, -1]).float()]
        for t in tokens[:-1]:  # one token at a time through the bfloat16 cache, as decoding does
            h = bf16.hidden_states(torch.tensor([[t]]), cache=cache)
            steps.append(bf16.out_head(h[:, -1]).float())
        got = torch.cat(steps)  # (48, V)
    assert (got - want).abs().max() < 0.03 * want.abs().max()  # bfloat16 keeps ~3 significant digits
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


# ------------------------------------------------------------------------------------------------
# batching


PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog and", "", "1, 2, 3, 4,", "Über café ☕"]


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_equals_individual(tok, model, temperature, use_cache):
    batch = generate(model, tok, PROMPTS, 30, temperature=temperature, top_p=0.95, seed=5, use_cache=use_cache)
    alone = [generate(model, tok, p, 30, temperature=temperature, top_p=0.95, seed=5 + i) for i, p in enumerate(PROMPTS)]
    assert batch == alone
    assert len(set(batch)) == len(PROMPTS)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_equals_individual_past_the_window(tok, small_ctx, temperature):
    """Rows of different lengths jump their windows at different steps; each matches its own run."""
    batch_ids = [tok.encode(p) or [tok.eot_id] for p in PROMPTS]
    gens = make_generators(9, len(batch_ids))
    batch = generate_ids(small_ctx, batch_ids, 70, temperature, keep=20, generators=gens)
    for i, ids in enumerate(batch_ids):
        alone = list(generate_tokens(small_ctx, ids, 70, temperature, keep=20, generator=make_generators(9 + i, 1)[0]))
        assert batch[i] == alone
        assert batch[i] == generate_ids(small_ctx, [ids], 70, temperature, keep=20, use_cache=False,
                                        generators=make_generators(9 + i, 1))[0]


def test_finished_rows_are_frozen(tok):
    # Row 0 ends at <|endoftext|> after 2 tokens, row 1 after 5, row 2 hits a stop string.
    short, long_ = tok.encode(" red green"), tok.encode(" one two three four five")
    other = tok.encode(" alpha beta gamma delta")
    prompts = ["A", "and then B", "C"]  # different lengths: left padding, then rows dropping out
    chain = {}
    for prompt, script in zip(prompts, (short, long_, other)):
        ids = [tok.encode(prompt)[-1], *script]
        chain.update(zip(ids, [*script, tok.eot_id]))
    gpt = bigram_gpt(tok, chain)
    for use_cache in (True, False):
        out = generate(gpt, tok, prompts, 20, temperature=0, stop=" gamma", use_cache=use_cache)
        assert out == [" red green", " one two three four five", " alpha beta"]
    batch_ids = [tok.encode(p) for p in prompts[:2]]
    assert generate_ids(gpt, batch_ids, 20, 0, stop_ids={tok.eot_id}) == [short, long_]
    # without an eos id the rows run on to max_new_tokens
    assert [len(r) for r in generate_ids(gpt, batch_ids, 9, 0)] == [9, 9]


def test_any_stop_id_ends_a_row(tok):
    # A chat model's answer ends at any of several ids (<|im_end|>, <|endoftext|>, ...), none of them output.
    script = tok.encode(" one two three four five")
    gpt = scripted_gpt(tok, "Count:", script)
    prompt = tok.encode("Count:")
    three, five = script[2], script[4]
    assert generate_ids(gpt, [prompt, prompt[-1:]], 20, 0, stop_ids={five, three}) == [script[:2], script[:2]]
    assert list(generate_tokens(gpt, prompt, 20, 0, stop_ids=[five])) == script[:4]
    assert generate_ids(gpt, [prompt], 20, 0, stop_ids={tok.eot_id}) == [script]


# ------------------------------------------------------------------------------------------------
# text: streaming, multi-byte characters, stop strings


def test_stream_never_splits_characters(tok):
    text = "日本語 ✓ 😀"
    script = tok.encode(text)
    assert len(script) > 5  # the CJK characters and the emoji take two tokens each
    gpt = scripted_gpt(tok, "Say:", script)
    pieces = list(stream(gpt, tok, "Say:", 50, temperature=0))
    assert pieces == ["日", "本", "語", " ✓", " ", "😀"]  # the space is released before the emoji is whole
    assert generate(gpt, tok, "Say:", 50, temperature=0) == text
    # cut mid-character by max_new_tokens: the dangling bytes become one U+FFFD at the end
    assert list(stream(gpt, tok, "Say:", 3, temperature=0)) == ["日", "\ufffd"]


def test_stream_joins_to_generate(tok, model):
    for kw in (dict(temperature=0), dict(temperature=1.0, seed=4, top_k=40), dict(temperature=1.0, seed=4, stop=["e", "an"])):
        pieces = list(stream(model, tok, "Tell me a story", 40, **kw))
        assert "".join(pieces) == generate(model, tok, "Tell me a story", 40, **kw)
        assert all(pieces)


def test_stop_strings(tok):
    text = " The cat sat on the mat; then it slept."
    script = tok.encode(text)
    gpt = scripted_gpt(tok, "Story:", script)
    assert generate(gpt, tok, "Story:", 50, temperature=0) == text  # ends at <|endoftext|>
    assert generate(gpt, tok, "Story:", 50, temperature=0, stop="; ") == " The cat sat on the mat"
    assert generate(gpt, tok, "Story:", 50, temperature=0, stop=["slept", "at on"]) == " The cat s"
    assert generate(gpt, tok, "Story:", 50, temperature=0, stop="dog") == text
    # a stop string that starts mid-token
    assert generate(gpt, tok, "Story:", 50, temperature=0, stop="e ma") == " The cat sat on th"
    # text that could begin a stop string is held back, then released when it turns out not to
    pieces = list(stream(gpt, tok, "Story:", 50, temperature=0, stop="mat!"))
    assert "".join(pieces) == text
    assert pieces[:7] == [" The", " cat", " sat", " on", " the", " ", "mat;"]  # "mat" waited for ";"


def test_text_assembler_holds_prefixes_of_stops(tok):
    a = TextAssembler(tok, ["<end>"])
    out = [a.push(t) for t in tok.encode("ok <en")] + [a.push(t) for t in tok.encode("d> later")]
    assert "".join(out) == "ok " and a.stopped


def test_eot_in_prompt_and_empty_prompt(tok, model):
    eot = tok.eot_id
    assert generate(model, tok, "", 12, temperature=0) == tok.decode(generate_ids(model, [[eot]], 12, 0, stop_ids={eot})[0])
    ids = tok.encode("a<|endoftext|>b", allowed_special="all")
    assert eot in ids
    assert generate(model, tok, "a<|endoftext|>b", 12, temperature=0) == tok.decode(generate_ids(model, [ids], 12, 0, stop_ids={eot})[0])


def test_zero_new_tokens_and_empty_batch(tok, model):
    assert generate(model, tok, "Hello", 0) == ""
    assert generate(model, tok, [], 5) == []
    assert list(stream(model, tok, "Hello", 0)) == []


def test_model_mode_is_restored(tok):
    gpt = random_gpt(tok)
    gpt.train()
    generate(gpt, tok, "Hi", 3, temperature=0)
    assert gpt.training
    gpt.eval()
    generate(gpt, tok, "Hi", 3, temperature=0)
    assert not gpt.training


def test_long_prompt_is_left_truncated(tok, small_ctx):
    ids = list(range(1000, 1040))  # 40 tokens, context 32
    with pytest.warns(UserWarning, match=r"prompt 0 has 40 tokens but the context holds 32: keeping its last 32 tokens"):
        out = generate_ids(small_ctx, [ids], 10, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate_ids(small_ctx, [ids[-32:]], 10, 0) == out
    with pytest.warns(UserWarning, match=r"prompt 1 has 41 tokens but the context holds 32") as record:
        generate(small_ctx, tok, ["short", " word" * 41], 5, temperature=0)
    assert record[0].filename == __file__  # the warning points at the caller's line


# ------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature must be a number >= 0 (0 = greedy), got -0.5"),
        (dict(top_k=0), "top_k must be an integer >= 1 or None, got 0"),
        (dict(top_p=0.0), "top_p must be in (0, 1] or None, got 0.0"),
        (dict(top_p=1.5), "top_p must be in (0, 1] or None, got 1.5"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0, got -1"),
        (dict(keep=0), "keep must be an integer in [1, 128] (the context length), got 0"),
        (dict(keep=129), "keep must be an integer in [1, 128] (the context length), got 129"),
        (dict(stop=""), "stop strings must be non-empty strings, got ''"),
    ],
)
def test_parameter_errors(tok, model, kwargs, message):
    with pytest.raises(ScratchLLMError) as err:
        generate(model, tok, "Hi", **kwargs)
    assert str(err.value) == message
    with pytest.raises(ScratchLLMError):  # stream checks when called, before the first piece
        stream(model, tok, "Hi", **kwargs)


def test_token_level_errors(model):
    with pytest.raises(ScratchLLMError, match="prompt 0 has no tokens"):
        generate_tokens(model, [], 5)
    with pytest.raises(ScratchLLMError, match=r"prompt 1: token id 50257 is outside the model's vocabulary 0..50256"):
        generate_ids(model, [[1], [50257]], 5)
    with pytest.raises(ScratchLLMError, match=r"prompt must be a str or a list of str, got int"):
        generate(model, None, 5)


# ------------------------------------------------------------------------------------------------
# the CLI


def test_cli_generate(tok, model, tmp_path, capsys):
    from scratchllm.checkpoint import save_model
    from scratchllm.cli import main

    save_model(model, tmp_path / "tiny", tok)
    expected = generate(model, tok, "Hello there", 15, temperature=0.8, top_k=50, seed=1)
    base = ["generate", "--model", str(tmp_path / "tiny"), "--prompt", "Hello there", "--max-new-tokens", "15", "--seed", "1"]
    assert main(base) == 0
    assert capsys.readouterr().out == "Hello there" + expected + "\n"
    assert main(base + ["--stream", "--no-cache"]) == 0
    assert capsys.readouterr().out == "Hello there" + expected + "\n"
    assert main(base + ["--temperature", "-1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "scratchllm generate: error: temperature must be a number >= 0 (0 = greedy), got -1.0\n"
    assert captured.out == ""



def test_encode_prompt_puts_the_bos_first_once(hf_tokenizer_dir):
    import transformers

    from scratchllm.inference.generation import encode_prompt

    d = hf_tokenizer_dir("llama3")
    llama, hf = Tokenizer.from_hf(d), transformers.AutoTokenizer.from_pretrained(d)
    bos = llama.special_tokens["<|begin_of_text|>"]
    assert encode_prompt(llama, "Once upon a time") == hf("Once upon a time")["input_ids"] == [bos, *llama.encode("Once upon a time")]
    assert encode_prompt(llama, "") == [bos]
    # a chat template writes the BOS itself: not a second one
    messages = [{"role": "user", "content": "Hi"}]
    text = llama.chat_template.render(messages, add_generation_prompt=True)
    assert encode_prompt(llama, text) == hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert encode_prompt(llama, text).count(bos) == 1
    qwen = Tokenizer.from_hf(hf_tokenizer_dir("qwen2"))  # no BOS: an empty prompt starts from the eos token
    assert encode_prompt(qwen, "") == [qwen.eot_id] and encode_prompt(qwen, "Hi") == qwen.encode("Hi")


# ------------------------------------------------------------------------------------------------
# the edges of the ranges: no inf/NaN probabilities, no empty nucleus, no seed overflow


def test_sampling_at_the_edges_of_the_valid_ranges(tok, model):
    """A temperature that small is greedy, a top_p that small keeps the most likely token (both
    crashed with inf/NaN probabilities or an empty set before)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -3.0], [0.0, 7.0, 7.0, 1.0]])
    gens = make_generators(0, 2)
    for temperature in (1e-39, 1e-50, 5e-324, 1e-7):
        assert sample_next(logits, temperature=temperature, generators=gens).tolist() == [0, 1]
    for top_p in (1e-46, 1e-300, 5e-324):
        drawn = {tuple(sample_next(logits, top_p=top_p, generators=gens).tolist()) for _ in range(50)}
        assert drawn <= {(0, 1), (0, 2)}  # the most likely token (of a tie, either)
    greedy = generate(model, tok, "Once upon a time", 20, temperature=0)
    assert generate(model, tok, "Once upon a time", 20, temperature=1e-39, seed=1) == greedy
    assert generate(model, tok, "Once upon a time", 20, temperature=1.0, top_p=1e-46, seed=2) == greedy


def test_seeds_are_64_bit_and_others_are_one_line(tok, model):
    for seed in (-(2**63), 2**64 - 1, 0):
        assert isinstance(generate(model, tok, "Hi", 3, seed=seed), str)
    for seed in (2**64, -(2**63) - 1, 1.5):
        with pytest.raises(ScratchLLMError) as err:
            generate(model, tok, "Hi", 3, seed=seed)
        assert str(err.value) == f"seed must be an integer in [-2**63, 2**64 - 1], got {seed!r}"
    with pytest.raises(ScratchLLMError, match=r"^seed must be an integer in \[-2\*\*63, 2\*\*64 - 2\], got 18446744073709551615$"):
        generate(model, tok, ["a", "b"], 3, seed=2**64 - 1)  # row 1 would be seeded with 2**64


def test_non_finite_scores_are_a_one_line_error():
    for bad in (float("nan"), float("inf")):
        logits = torch.tensor([[0.0, bad, 1.0]])
        for temperature in (0.0, 1.0):
            with pytest.raises(ScratchLLMError, match=r"^the model's next-token scores are NaN or infinite"):
                sample_next(logits, temperature=temperature)


def test_cli_generate_at_the_edges(tok, model, tmp_path, capsys):
    from scratchllm.checkpoint import save_model
    from scratchllm.cli import main

    save_model(model, tmp_path / "tiny", tok)
    base = ["generate", "--model", str(tmp_path / "tiny"), "--prompt", "Hello", "--max-new-tokens", "8"]
    greedy = generate(model, tok, "Hello", 8, temperature=0)
    for extra in (["--temperature", "1e-39"], ["--top-p", "1e-46", "--seed", "3"]):
        assert main(base + extra) == 0
        assert capsys.readouterr().out == "Hello" + greedy + "\n"
    assert main(base + ["--seed", str(2**64)]) == 2
    assert capsys.readouterr().err == f"scratchllm generate: error: seed must be an integer in [-2**63, 2**64 - 1], got {2**64}\n"
