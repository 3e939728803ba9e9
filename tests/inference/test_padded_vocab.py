"""A config.json vocab_size larger than the tokenizer (Qwen2.5's layout: 151,936 rows for 151,665 tokens):
rows of the head past the tokenizer are never sampled, on every decoding path (inference/sampling.py
`sample_next` cuts them), for a directory of each Hugging Face family whose head prefers the padding by
far (tests/hostile.py `padded_hf_dir`). Before, the first sampled padded id failed ("token id 510:
expected an int in 0..328") and serve answered 500 mid-answer."""

from __future__ import annotations

import pytest

from scratchllm.checkpoint.loader import load
from scratchllm.cli import main
from scratchllm.inference.chat import ChatSession
from scratchllm.inference.config import ChatSettings
from scratchllm.inference.generation import generate, generate_ids, generate_tokens, stream
from scratchllm.inference.sampling import sample_next
from tests.hostile import FAMILIES, padded_hf_dir


@pytest.fixture(scope="module", params=list(FAMILIES))
def padded(request, hf_tokenizer_dir, tmp_path_factory):
    """(family, model, tokenizer, directory) of a padded directory of each family."""
    d = padded_hf_dir(hf_tokenizer_dir(FAMILIES[request.param][1]), tmp_path_factory.mktemp("padded"), request.param)
    model, tok = load(d, device="cpu")
    assert model.config.vocab_size % 128 == 0 and model.config.vocab_size >= tok.vocab_size + 2
    return request.param, model, tok, d


def test_the_padding_is_what_an_unmasked_decoder_would_pick(padded):
    family, model, tok, _ = padded
    unmasked = generate_ids(model, [tok.encode("Hello")], max_new_tokens=4, temperature=0)[0]
    assert unmasked and all(i >= tok.vocab_size for i in unmasked)  # so the tests below can fail


@pytest.mark.parametrize("decoder", ["eager", "static"])  # static: the CUDA-graph loop, run eagerly on a CPU
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_decoding_path_stays_in_the_tokenizer(padded, decoder, temperature):
    family, model, tok, _ = padded
    limit = tok.vocab_size
    prompts = [tok.encode("Hello"), tok.encode("The year 2024 was")]
    options = dict(max_new_tokens=12, temperature=temperature, decoder=decoder, vocab_limit=limit)
    single = list(generate_tokens(model, prompts[0], **options))
    batch = generate_ids(model, prompts, **options)  # left-padded rows of two lengths
    assert len(single) == 12 and all(len(row) == 12 for row in batch)
    assert max(max(single), *map(max, batch)) < limit
    if temperature == 0:
        assert batch[0] == single
    # text in, text out: the tokenizer's size is the limit, with no argument to forget
    texts = generate(model, tok, ["Hello", "The year 2024 was"], max_new_tokens=12, temperature=temperature, seed=1,
                     decoder=decoder)
    assert all(isinstance(t, str) for t in texts)
    assert "".join(stream(model, tok, "Hello", max_new_tokens=12, temperature=temperature, seed=1, decoder=decoder)) \
        == generate(model, tok, "Hello", max_new_tokens=12, temperature=temperature, seed=1, decoder=decoder)


def test_chat_and_the_command_line_answer(padded, capsys):
    family, model, tok, d = padded
    answer = ChatSession(model, tok, "plain", ChatSettings(max_new_tokens=10, temperature=1.0, seed=3)).send("Hi")
    assert isinstance("".join(answer), str) and answer.tokens == 10
    assert main(["generate", "--model", str(d), "--prompt", "Hello", "--max-new-tokens", "8", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_sample_next_cuts_the_padding_whatever_the_setting():
    import torch

    logits = torch.tensor([[0.0, 1.0, 2.0, 50.0, 60.0], [3.0, 0.0, 0.0, 50.0, -60.0]])  # ids 3, 4: padding
    assert sample_next(logits, 0.0).tolist() == [4, 3]
    assert sample_next(logits, 0.0, vocab_limit=3).tolist() == [2, 0]
    for top_k, top_p in ((None, None), (2, None), (None, 0.5), (10, 0.99)):
        gens = [torch.Generator().manual_seed(k) for k in range(2)]
        for _ in range(20):
            assert max(sample_next(logits, 5.0, top_k, top_p, gens, vocab_limit=3).tolist()) < 3


@pytest.mark.cuda
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_cuda_graph_path_stays_in_the_tokenizer(padded, temperature):
    family, _, tok, d = padded
    model, _ = load(d, device="cuda")
    prompts = [tok.encode("Hello"), tok.encode("The year 2024 was")]
    batch = generate_ids(model, prompts, max_new_tokens=24, temperature=temperature, decoder="static",
                         vocab_limit=tok.vocab_size)
    assert all(len(row) == 24 for row in batch) and max(map(max, batch)) < tok.vocab_size
    text = generate(model, tok, "Hello", max_new_tokens=24, temperature=temperature, seed=2, decoder="static")
    if temperature == 0:  # sampled draws may differ with the kernels' last bits
        assert text == generate(model, tok, "Hello", max_new_tokens=24, temperature=0, decoder="eager")
