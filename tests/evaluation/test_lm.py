"""One call for any task (evaluation/lm.py): `evaluate(task, model)` runs each task class, gives the
keyword forms' reports, and names what it expected for anything else."""

from __future__ import annotations

import json

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.evaluation.lm import evaluate, evaluate_choice, evaluate_perplexity
from scratchllm.evaluation.tasks import ChoiceTask, PerplexityTask, ResponsesTask
from tests.helpers import tiny_gpt


def test_task_objects_give_the_keyword_forms_reports(tmp_path, shared_data, small_tok):
    model = tiny_gpt(small_tok.vocab_size, seed=4)
    text = shared_data / "the-verdict.txt"
    by_task = evaluate(PerplexityTask(text, stride=16, max_tokens=200), model, tokenizer=small_tok, batch_size=3)
    by_keywords = evaluate_perplexity(model, text, tokenizer=small_tok, stride=16, max_tokens=200)
    assert by_task == by_keywords and by_task["tokens"] == 200 and by_task["data"] == str(text)
    rows = [{"context": "It had always", "choices": [" been", " her"], "label": 0},
            {"context": "the", "choices": [" picture", " man", " house"], "label": 2}]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    by_task = evaluate(ChoiceTask(data, limit=1), model, tokenizer=small_tok)
    assert by_task == evaluate_choice(model, data, tokenizer=small_tok, limit=1) and by_task["n"] == 1


def test_anything_but_a_scored_task_is_named(small_tok):
    with pytest.raises(ScratchLLMError) as info:
        evaluate(ResponsesTask("responses.json"), tiny_gpt(small_tok.vocab_size), tokenizer=small_tok)
    assert str(info.value) == "task ResponsesTask: expected one of PerplexityTask, ChoiceTask, FewshotTask"
