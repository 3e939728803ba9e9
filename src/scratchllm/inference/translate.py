"""Translate: an encoder-decoder's output for a source text, greedy or by beam search."""

from __future__ import annotations

from scratchllm.errors import ScratchLLMError
from scratchllm.models.encoder_decoder import EncoderDecoder, beam_decode, greedy_decode
from scratchllm.tokenizer import Tokenizer


def translate(model: EncoderDecoder, tokenizer: Tokenizer, text: str, beam: int = 1,
              max_new_tokens: int | None = None, length_penalty: float = 1.0, use_cache: bool = True) -> str:
    """The model's output for `text`: greedy with beam=1, else the best beam-search hypothesis."""
    if not isinstance(text, str) or not text.strip():
        raise ScratchLLMError("the text to translate is empty")
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ScratchLLMError(f"beam {beam!r}: expected an integer >= 1")
    ids = tokenizer.encode(text, disallowed_special=())
    if len(ids) > model.config.context_length:
        raise ScratchLLMError(f"the text to translate is {len(ids)} tokens, more than the model's context of "
                              f"{model.config.context_length}")
    eot = tokenizer.eot_id
    if beam == 1:
        out = greedy_decode(model, [ids], eot, max_new_tokens, use_cache)[0]
    else:
        out = beam_decode(model, ids, eot, beam, max_new_tokens, length_penalty, use_cache)[0].tokens
    return tokenizer.decode(out)

