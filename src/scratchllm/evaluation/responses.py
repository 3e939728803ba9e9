"""Responses of an instruction-tuned model, and how good they are (the book's chapter 7.7-7.8).

`respond` generates an answer for each record of a test file (greedy by default); `evaluate_responses`
scores them with ROUGE-L F1 (Lin 2004) and exact match against the reference, and optionally with
an LLM judge behind any OpenAI-compatible chat endpoint (Ollama, vLLM, `scratchllm serve`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from scratchllm.core.files import check_overwrite, write_json
from scratchllm.core.options import group_specs
from scratchllm.data.instructions import check_records, check_string, prompt_and_response, read_records
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import RespondConfig, SamplingConfig
from scratchllm.inference.session import InferenceSession, load_session
from scratchllm.prompts import get_style

def respond(
    model: Any,
    data: str | os.PathLike[str] | list[dict],
    out: str | os.PathLike[str] | None = None,
    sampling: SamplingConfig | None = None,
    *,
    batch_size: int = 8,
    prompt_style: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    quantize: str | None = None,
    limit: int | None = None,
    tokenizer=None,
    progress: bool = True,
    overwrite: bool = False,
    **sampling_fields: Any,
) -> list[dict]:
    """Generate a response to each record; returns (and writes to `out`) the records with `model_response`.

    model: a model or run directory / GPT-2 name (adapters are merged in; loaded on `device` in `dtype`,
    `quantize`d, as `session.load_session` does), or a loaded GPT with `tokenizer`. sampling: the
    settings whole, or their fields as keywords (max_new_tokens=128, ...) over respond's defaults
    (`RespondConfig`: greedy, seed 123, 256 tokens). The prompt style is `prompt_style`, else the one
    stored with the model, else the model's chat template if its tokenizer has one, else alpaca.
    Generation stops at a stop id (<|endoftext|>, a template's end-of-turn token), at the style's stop
    strings (the start of a next turn) or after max_new_tokens. Records go through in batches, sorted
    by prompt length so that little left padding is decoded; batch k samples with seed + k *
    batch_size. An existing `out` is an error (before any generation) unless `overwrite`.
    """
    from tqdm.auto import tqdm

    if out is not None:
        check_overwrite(out, overwrite, "responses file")
    sampling = respond_sampling(sampling, sampling_fields)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScratchLLMError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    records = data if isinstance(data, list) else check_records(read_records(data), str(data), need_answer=False)
    if limit is not None:
        records = records[:limit]
    if isinstance(model, (str, os.PathLike)):
        session = load_session(model, device, dtype, prompt_style, fallback_style="alpaca", quantize=quantize)
    else:
        session = InferenceSession.of(model, tokenizer, prompt_style, fallback_style="alpaca")
    style = session.style
    prompts = [prompt_and_response(r, style)[0] for r in records]
    lengths = [len(session.tokenizer.encode_ordinary(p)) for p in prompts]
    order = sorted(range(len(records)), key=lambda i: lengths[i])
    answers: dict[int, str] = {}
    session.model.eval()
    bar = tqdm(total=len(records), desc="respond", unit="record", file=sys.stderr, disable=None if progress else True)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch_sampling = dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + start)
        texts = session.generate([prompts[i] for i in chunk], batch_sampling, stop=style.stop_strings or None)
        for i, text in zip(chunk, texts):
            answers[i] = text.strip()
        bar.update(len(chunk))
    bar.close()
    results = [{**record, "model_response": answers[i]} for i, record in enumerate(records)]
    if out is not None:
        write_json(out, results)
    return results


def respond_sampling(sampling: SamplingConfig | None, fields: dict[str, Any]) -> SamplingConfig:
    """respond's settings: `sampling` whole, or SamplingConfig fields given as keywords over
    RespondConfig's defaults (not both)."""
    if sampling is not None and fields:
        raise ScratchLLMError(f"respond: give sampling= or its fields ({', '.join(sorted(fields))}), not both")
    if sampling is not None:
        return sampling
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ScratchLLMError(f"respond: unknown argument(s) {', '.join(unknown)}; the sampling fields are "
                              f"{', '.join(sorted(known))}")
    return SamplingConfig(**{**group_specs(RespondConfig)["sampling"].defaults, **fields})



# --------------------------------------------------------------------------------------------------
# Scoring responses: ROUGE-L, exact match, LLM-as-judge


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 (Lin 2004): with L = LCS of the lower-cased word sequences, recall = L / |ref|,
    precision = L / |candidate|, F1 = 2PR / (P + R). Two empty texts score 1, one empty text 0."""
    ref, cand = _words(reference), _words(candidate)
    if not ref and not cand:
        return 1.0
    lcs = lcs_length(ref, cand)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(reference: str, candidate: str) -> bool:
    """Same text after trimming and collapsing whitespace (case and punctuation count)."""
    return " ".join(reference.split()) == " ".join(candidate.split())


JUDGE_TEMPLATE = (
    "Given the input `{input}` and correct output `{output}`, score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)


def judge_prompt(record: dict) -> str:
    """The book's scoring prompt (ch. 7.8): the Alpaca-formatted instruction, the reference and the response."""
    if "messages" in record:
        prompt, reference = prompt_and_response(record, get_style("alpaca"))
        prompt = prompt.removesuffix("### Response:\n").rstrip()
    else:
        prompt = get_style("alpaca").format_instruction(record["instruction"], record.get("input") or "")
        prompt = prompt.removesuffix("\n\n### Response:\n")
        reference = record.get("output")
    return JUDGE_TEMPLATE.format(input=prompt, output=reference or "", response=record.get("model_response", ""))


_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def parse_score(text: str | None) -> int | None:
    """The 0-100 score in a judge's answer, or None when there is none.

    Tolerates what chat models write around the number: "85", "Score: 85/100", "**72**",
    "I'd give it 90.", "8/10" (scaled to 80), "90 out of 100". A mention of the scale itself
    ("0 to 100") is skipped; the first remaining number counts. Out of [0, 100] -> None (rejected),
    since such an answer did not follow the scale.
    """
    if not isinstance(text, str):
        return None
    text = text.replace("*", "").replace("_", " ")
    text = re.sub(r"\b0\s*(?:to|-|–|and)\s*100\b", " ", text)  # "on a scale from 0 to 100"
    m = re.search(rf"({_NUMBER})\s*(?:/|out of)\s*(10|100)\b", text)
    if m:
        value = float(m.group(1)) * 100 / float(m.group(2))
    else:
        m = re.search(_NUMBER, text)
        if m is None:
            return None
        value = float(m.group(0))
    if not 0 <= value <= 100:
        return None
    return int(round(value))


def chat_endpoint(url: str) -> str:
    """{url}/v1/chat/completions, accepting a base URL with or without /v1 or the full path."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def query_judge(url: str, model: str, prompt: str, timeout: float = 120.0, api_key: str | None = None) -> str:
    """One user message to an OpenAI-compatible chat endpoint (Ollama, vLLM, `scratchllm serve`, ...);
    returns the answer's text. Greedy (temperature 0) so scores are repeatable."""
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "seed": 123,
        "stream": False,
    }).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    endpoint = chat_endpoint(url)
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise ScratchLLMError(f"judge {endpoint}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ScratchLLMError(f"judge {endpoint}: cannot connect ({getattr(exc, 'reason', exc)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ScratchLLMError(f"judge {endpoint}: the answer is not JSON") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ScratchLLMError(f"judge {endpoint}: expected choices[0].message.content in the answer, got {str(data)[:200]}") from None
    return content if isinstance(content, str) else ""


def load_responses(path: str | os.PathLike[str]) -> list[dict]:
    """Records with a `model_response` (what `respond` writes), checked."""
    records = read_records(path)
    check_records(records, str(path), need_answer=False)
    for i, record in enumerate(records):
        check_string(record, "model_response", f"{path}: record {i}")
    return records


def _reference(record: dict) -> str | None:
    if "messages" in record:
        last = record["messages"][-1]
        return last["content"] if last["role"] == "assistant" else None
    return record.get("output")


def evaluate_responses(
    data: str | os.PathLike[str] | list[dict],
    judge_url: str | None = None,
    judge_model: str | None = None,
    out: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
    api_key: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Scores of the `model_response` of each record against its reference output.

    Always: mean ROUGE-L F1 and exact-match rate (records without a reference are skipped).
    With `judge_url` and `judge_model`: each response is scored 0-100 by the judge (`judge_prompt`,
    `parse_score`); the mean is over the parsed scores and unparsed answers are counted. The
    report (with per-record scores) is written to `out` when given (an existing one only with overwrite).
    """
    if out is not None:
        check_overwrite(out, overwrite, "report file")
    records = load_responses(data) if not isinstance(data, list) else data
    if (judge_url is None) != (judge_model is None):
        raise ScratchLLMError("judge: give both --judge-url and --judge-model (or neither)")
    rows: list[dict[str, Any]] = []
    for record in records:
        reference = _reference(record)
        row: dict[str, Any] = {}
        if reference is not None:
            row["rouge_l"] = rouge_l(reference, record["model_response"])
            row["exact_match"] = exact_match(reference, record["model_response"])
        rows.append(row)
    scored = [r for r in rows if "rouge_l" in r]
    report: dict[str, Any] = {
        "n": len(records),
        "n_with_reference": len(scored),
        "rouge_l_f1": sum(r["rouge_l"] for r in scored) / len(scored) if scored else None,
        "exact_match": sum(r["exact_match"] for r in scored) / len(scored) if scored else None,
    }
    if judge_url is not None:
        from tqdm.auto import tqdm

        scores: list[int] = []
        for record, row in tqdm(list(zip(records, rows)), desc="judge", disable=not progress, file=sys.stderr):
            answer = query_judge(judge_url, judge_model, judge_prompt(record), timeout, api_key)
            row["judge_answer"], row["judge_score"] = answer, parse_score(answer)
            if row["judge_score"] is not None:
                scores.append(row["judge_score"])
        report["judge"] = {
            "model": judge_model,
            "url": judge_url,
            "mean_score": sum(scores) / len(scores) if scores else None,
            "n_scored": len(scores),
            "n_unparsed": len(records) - len(scores),
        }
    report["records"] = rows
    if out is not None:
        write_json(out, report)
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """The few lines `scratchllm evaluate responses` prints."""
    def pct(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = [f"responses          {report['n']} ({report['n_with_reference']} with a reference)",
             f"ROUGE-L F1         {pct(report['rouge_l_f1'])}",
             f"exact match        {pct(report['exact_match'])}"]
    judge = report.get("judge")
    if judge:
        mean = "n/a" if judge["mean_score"] is None else f"{judge['mean_score']:.2f}"
        lines.append(f"judge mean score   {mean} / 100 ({judge['model']}; {judge['n_scored']} scored, "
                     f"{judge['n_unparsed']} without a number)")
    return "\n".join(lines)



