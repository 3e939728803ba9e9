"""Instruction and preference records: Alpaca-style {"instruction", "input", "output"} (Taori et al.
2023), chat {"messages": [...]}, and DPO {"instruction", "input", "chosen", "rejected"}; read from
JSON or JSONL with one-line errors naming the record and field, split 85/5/10 as in the book's
chapter 7, and laid out as prompt + response ids by a prompt style (`scratchllm.prompts`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratchllm.core.files import json_lines, read_text
from scratchllm.errors import ScratchLLMError
from scratchllm.prompts import PromptStyle

ROLES = ("system", "user", "assistant")



def read_records(path: str | os.PathLike[str]) -> list[Any]:
    """The records of a JSON list file or a JSONL file (one JSON object per line)."""
    path = Path(path)
    text = read_text(path, expected="a JSON list of records or JSONL")
    stripped = text.strip()
    if not stripped:
        raise ScratchLLMError(f"{path}: empty file (expected a JSON list of records or JSONL)")
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ScratchLLMError(f"{path}: not valid JSON ({exc})") from None
    else:
        records = [value for _, value in json_lines(text, path)]
    if not isinstance(records, list):
        raise ScratchLLMError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ScratchLLMError(f"{path}: no records")
    return records


def check_string(record: dict, field_name: str, where: str, required: bool = True, non_empty: bool = False) -> None:
    if field_name not in record or record[field_name] is None:
        if required:
            raise ScratchLLMError(f"{where}: missing field {field_name!r}")
        return
    value = record[field_name]
    if not isinstance(value, str):
        raise ScratchLLMError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    if non_empty and not value.strip():
        raise ScratchLLMError(f"{where}: field {field_name!r} is empty")


def _check_messages(record: dict, where: str, need_answer: bool) -> None:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ScratchLLMError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ScratchLLMError(
                f"{where}: field 'messages'[{j}] must be {{\"role\": system|user|assistant, \"content\": string}}, got {m!r}"
            )
    if need_answer and messages[-1]["role"] != "assistant":
        raise ScratchLLMError(f"{where}: field 'messages' must end with an assistant message (the answer to learn)")


def check_records(records: list[Any], source: str, responses: Sequence[str] = ("output",), need_answer: bool = True) -> list[dict]:
    """Raise ScratchLLMError naming the first bad record (by index) and field; return the records.

    A record is Alpaca-style (instruction, optional input, and each field of `responses`) or
    chat-style (messages, ending with the assistant answer when `need_answer`).
    """
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(record, dict):
            raise ScratchLLMError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "messages" in record:
            _check_messages(record, where, need_answer)
            continue
        check_string(record, "instruction", where, non_empty=True)
        check_string(record, "input", where, required=False)
        for name in responses:
            check_string(record, name, where, required=need_answer)
    return records


def load_instruction_data(path: str | os.PathLike[str]) -> list[dict]:
    """Alpaca-style or chat records of a JSON/JSONL file, checked."""
    return check_records(read_records(path), str(path))


def load_preference_data(path: str | os.PathLike[str]) -> list[dict]:
    """{"instruction", "input", "chosen", "rejected"} records of a JSON/JSONL file, checked."""
    records = read_records(path)
    for i, record in enumerate(records):
        if isinstance(record, dict) and "messages" in record:
            raise ScratchLLMError(f"{path}: record {i}: preference records need instruction/chosen/rejected, not messages")
    return check_records(records, str(path), responses=("chosen", "rejected"))


def split_records(records: list, seed: int = 123, train: float = 0.85, test: float = 0.10) -> tuple[list, list, list]:
    """(train, val, test) after a seeded shuffle: 85% / 5% / 10% as in the book's chapter 7
    (train and test sizes rounded down, validation the rest: 935 / 55 / 110 of 1,100)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    shuffled = [records[i] for i in order]
    n_train, n_test = int(len(records) * train), int(len(records) * test)
    return shuffled[:n_train], shuffled[n_train + n_test :], shuffled[n_train : n_train + n_test]


def split_with_files(records: list, val: str | None, test: str | None, seed: int, loader) -> tuple[list, list, list]:
    """(train, val, test): the book's seeded 85/5/10 split, or the given files for val / test with
    only the missing parts carved from `records`."""
    if val is None and test is None:
        return split_records(records, seed)
    val_records = loader(val) if val is not None else None
    test_records = loader(test) if test is not None else None
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    rest = [records[i] for i in order]
    n = len(records)
    if test_records is None:
        test_records, rest = rest[: int(n * 0.10)], rest[int(n * 0.10) :]
    if val_records is None:
        k = n - int(n * 0.85) - int(n * 0.10)  # the book's 5%
        val_records, rest = rest[:k], rest[k:]
    return rest, val_records, test_records



# --------------------------------------------------------------------------------------------------
# Prompt + response -> token ids


def prompt_and_response(record: dict, style: PromptStyle, response: str = "output") -> tuple[str, str | None]:
    """The prompt text the model sees and the reference answer that follows it (None if absent).

    Chat records: every message but a final assistant one forms the prompt; that last message is
    the answer (only the final turn is learned).
    """
    if "messages" in record:
        messages = record["messages"]
        if messages and messages[-1]["role"] == "assistant":
            return style.format_chat(messages[:-1], add_generation_prompt=True), messages[-1]["content"]
        return style.format_chat(messages, add_generation_prompt=True), None
    return style.format_instruction(record["instruction"], record.get("input") or ""), record.get(response)


def encode_example(tokenizer, style: PromptStyle, record: dict, response: str = "output") -> tuple[list[int], int]:
    """(prompt + response ids, number of prompt ids). Prompt and response are encoded separately,
    the way `respond` encodes the prompt alone; special-token text in them stays plain text, except
    the control tokens a chat template's markup writes into the prompt (`Tokenizer.encode_chat`; as
    transformers' apply_chat_template encodes it, except that it also makes control tokens of a message's
    special-token text). Other styles' prompts start with the tokenizer's BOS (Llama 3's; GPT-2 has none),
    as `generation.encode_prompt` starts them at inference."""
    prompt, answer = prompt_and_response(record, style, response)
    if style.writes_special_tokens:
        prompt_ids = tokenizer.encode_chat(prompt)
    else:
        prompt_ids = [*tokenizer.bos_ids, *tokenizer.encode_ordinary(prompt)]
    return prompt_ids + tokenizer.encode_ordinary(answer or ""), len(prompt_ids)


def encode_preference(tokenizer, style: PromptStyle, record: dict) -> tuple[tuple[list[int], int], tuple[list[int], int]]:
    """((chosen ids, prompt length), (rejected ids, prompt length)) of a preference record."""
    return encode_example(tokenizer, style, record, "chosen"), encode_example(tokenizer, style, record, "rejected")

