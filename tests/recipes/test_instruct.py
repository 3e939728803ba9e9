"""Instruction tuning, DPO and response evaluation: exact collation and masks, the book's split, record
errors that name the record and field, the DPO loss by hand, ROUGE-L by hand, judge answers parsed and
scored through a stub OpenAI-compatible server, and the recipes end to end on a tiny model."""

from __future__ import annotations

import copy
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from scratchllm.checkpoint import load, read_model_config, save_model
from scratchllm.cli import main
from scratchllm.models.config import GPTConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate
from scratchllm.checkpoint.adapter_dir import load_adapters
from scratchllm.data.instructions import (encode_example, encode_preference, load_instruction_data, load_preference_data,
                                          prompt_and_response, split_records)
from scratchllm.evaluation.responses import (evaluate_responses, exact_match, judge_prompt, lcs_length, parse_score,
                                             respond, rouge_l)
from scratchllm.recipes.dpo import PreferenceTask, dpo_loss, sequence_logprobs
from scratchllm.recipes.instruct import IGNORE_INDEX, InstructionTask, collate_instructions
from scratchllm.models.gpt import GPT
from scratchllm.prompts import get_style

ALPACA = get_style("alpaca")
PAD = 50256
X = IGNORE_INDEX

# --------------------------------------------------------------------------------------------------
# fixtures: a BPE tokenizer trained on the instruction texts and a tiny GPT saved with it


@pytest.fixture(scope="module")
def records(shared_data):
    return json.loads((shared_data / "instruction-data.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def preferences(shared_data):
    return json.loads((shared_data / "instruction-data-with-preference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer(records):
    from scratchllm.tokenizer import Tokenizer

    text = "\n\n".join(ALPACA.format_instruction(r["instruction"], r["input"]) + r["output"] for r in records[:300])
    return Tokenizer.train([text], 512)


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("gpt-tiny", vocab_size=vocab_size, **{"context_length": 256, **overrides}))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("model") / "base"
    save_model(tiny_model(tokenizer.vocab_size), d, tokenizer)
    return d


def write(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------------------------
# collation


BOOK_BATCH = [([0, 1, 2, 3, 4], 2), ([5, 6], 1), ([7, 8, 9], 3)]  # the book's section 7.3 example


@pytest.mark.parametrize(
    "mask_prompt, max_length, inputs, targets",
    [
        (False, None,
         [[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]],
         [[1, 2, 3, 4, PAD], [6, PAD, X, X, X], [8, 9, PAD, X, X]]),
        (True, None,  # prompts of 2, 1 and 3 tokens: targets predicting prompt tokens 1..P-1 are ignored
         [[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]],
         [[X, 2, 3, 4, PAD], [6, PAD, X, X, X], [X, X, PAD, X, X]]),
        (False, 3,
         [[0, 1, 2], [5, 6, PAD], [7, 8, 9]],
         [[1, 2, 3], [6, PAD, X], [8, 9, PAD]]),
    ],
)
def test_collate_pads_shifts_and_masks_exactly(mask_prompt, max_length, inputs, targets):
    x, y = collate_instructions(BOOK_BATCH, PAD, mask_prompt=mask_prompt, max_length=max_length)
    assert x.tolist() == inputs
    assert y.tolist() == targets
    assert x.dtype == y.dtype == torch.long


def test_encode_example_splits_prompt_and_response(tokenizer, records):
    record = records[1]  # "Edit the following sentence for grammar." / "He go to the park every day."
    ids, n_prompt = encode_example(tokenizer, ALPACA, record)
    prompt = ALPACA.format_instruction(record["instruction"], record["input"])
    assert prompt.endswith("### Input:\nHe go to the park every day.\n\n### Response:\n")
    assert ids[:n_prompt] == tokenizer.encode(prompt)
    assert tokenizer.decode(ids[n_prompt:]) == "He goes to the park every day."
    # with mask_prompt exactly the response and the end-of-text are learned
    _, y = collate_instructions([(ids, n_prompt)], tokenizer.eot_id, mask_prompt=True)
    learned = [t for t in y[0].tolist() if t != X]
    assert learned == ids[n_prompt:] + [tokenizer.eot_id]


def test_chat_records_learn_the_last_assistant_turn():
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    prompt, answer = prompt_and_response(record, get_style("phi3"))
    assert prompt == "<|user|>\nHi\n\n<|assistant|>\nHello!\n\n<|user|>\n2+2?\n\n<|assistant|>\n"
    assert answer == "4"


# --------------------------------------------------------------------------------------------------
# reading and checking records


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty file (expected a JSON list of records or JSONL)"),
        ("[]", "no records"),
        ('{"instruction": "a", "output": "b"}\n{"output": "c"}', "record 1: missing field 'instruction'"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}]', "record 1: missing field 'output'"),
        ('[{"instruction": "a", "input": 3, "output": "b"}]', "record 0: field 'input' must be a string, got int"),
        ('[{"instruction": " ", "output": "b"}]', "record 0: field 'instruction' is empty"),
        ('[{"instruction": "a", "output": "b"}, ["x"]]', "record 1: expected a JSON object, got list"),
        ('{"a": 1}', "record 0: missing field 'instruction'"),
        ('[{"messages": [{"role": "user", "content": "hi"}]}]',
         "record 0: field 'messages' must end with an assistant message (the answer to learn)"),
        ('[{"messages": [{"role": "bot", "content": "hi"}]}]',
         "record 0: field 'messages'[0] must be {\"role\": system|user|assistant, \"content\": string}, got {'role': 'bot', 'content': 'hi'}"),
        ("[1, 2", "not valid JSON (Expecting ',' delimiter: line 1 column 6 (char 5))"),
    ],
)
def test_bad_instruction_files_name_the_record_and_field(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ScratchLLMError) as err:
        load_instruction_data(path)
    assert str(err.value) == f"{path}: {message}"


def test_preference_records_need_chosen_and_rejected(tmp_path):
    path = write(tmp_path / "p.json", [{"instruction": "a", "chosen": "b", "rejected": "c"}, {"instruction": "a", "chosen": "b"}])
    with pytest.raises(ScratchLLMError, match=r"p\.json: record 1: missing field 'rejected'$"):
        load_preference_data(path)


def test_jsonl_and_json_read_the_same(tmp_path, records):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records[:5]) + "\n\n", encoding="utf-8")
    assert load_instruction_data(tmp_path / "d.jsonl") == records[:5]
    assert load_instruction_data(write(tmp_path / "d.json", records[:5])) == records[:5]


def test_the_default_split_is_the_books_85_5_10_and_seeded(records):
    assert len(records) == 1100
    train, val, test = split_records(records, seed=123)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    ids = lambda rs: {json.dumps(r, sort_keys=True) for r in rs}  # noqa: E731
    assert ids(train) | ids(val) | ids(test) == ids(records)
    assert split_records(records, seed=123) == (train, val, test)
    assert split_records(records, seed=124)[2] != test


# --------------------------------------------------------------------------------------------------
# the instruction task


def test_instruction_task_batches_resume_and_evaluate(tokenizer, records):
    examples = [encode_example(tokenizer, ALPACA, r) for r in records[:10]]
    make = lambda: InstructionTask(examples[:7], examples[7:], tokenizer.eot_id, batch_size=3, seed=5)  # noqa: E731
    task = make()
    assert task.steps_per_epoch == 2  # 7 // 3, the last partial batch dropped as the book's loader
    first = [task.next_batch() for _ in range(3)]
    state = task.state_dict()
    assert state == {"loader": {"epoch": 1, "position": 1, "seed": 5}}
    following = task.next_batch()
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert torch.equal(resumed.next_batch()[0], following[0])
    assert all(b[0].shape[0] == 3 for b in first)
    # validation loss: the token-weighted mean over every target of the split
    model = tiny_model(tokenizer.vocab_size)
    x, y = collate_instructions(examples[7:], tokenizer.eot_id)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert abs(task.evaluate(model)["val_loss"] - expected) < 1e-5


# --------------------------------------------------------------------------------------------------
# DPO


def test_dpo_loss_matches_a_hand_computation():
    policy_chosen, policy_rejected = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -3.0])
    loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5)
    # pair 0: 0.5 * ((-1 + 2) - (-3 + 2)) = 1.0;  pair 1: 0.5 * ((-4 + 4) - (-2 + 3)) = -0.5
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2  # -log sigmoid(z) = log(1 + e^-z)
    assert abs(loss.item() - expected) < 1e-6
    assert abs(loss.item() - 0.6436694) < 1e-6  # (0.3132617 + 0.9740770) / 2
    assert chosen.tolist() == [0.5, 0.0] and rejected.tolist() == [-0.5, 0.5]


def test_sequence_logprobs_sum_only_the_response_tokens():
    model = tiny_model(50, seed=3)
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    y = torch.tensor([[X, 3, 4, 9], [X, X, 8, X]])
    with torch.no_grad():
        logp = torch.log_softmax(model(x), dim=-1)
        expected = [logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 9], logp[1, 2, 8]]
        got = sequence_logprobs(model, x, y)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


def test_a_few_dpo_steps_raise_preference_accuracy(tokenizer, preferences):
    pairs = [encode_preference(tokenizer, ALPACA, r) for r in preferences[:4]]
    model = tiny_model(tokenizer.vocab_size, seed=1)
    task = PreferenceTask(copy.deepcopy(model), pairs, pairs, tokenizer.eot_id, beta=0.1, batch_size=4)
    before = task.evaluate(model)
    assert before["val_pref_accuracy"] == 0.0 and before["val_reward_margin"] == 0.0
    assert abs(before["val_loss"] - math.log(2)) < 1e-6  # policy == reference: -log sigmoid(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(6):
        loss = task.loss(model, task.next_batch())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = task.evaluate(model)
    assert after["val_pref_accuracy"] == 1.0
    assert after["val_reward_margin"] > 0.5 and after["val_loss"] < 0.5


# --------------------------------------------------------------------------------------------------
# scoring responses


@pytest.mark.parametrize(
    "reference, candidate, expected",
    [
        ("the cat sat on the mat", "the cat on the mat", 10 / 11),  # LCS 5: P = 5/5, R = 5/6
        ("A B C D", "B D E", 4 / 7),  # LCS "b d": P = 2/3, R = 2/4, F1 = 2PR / (P + R)
        ("Hello, World!", "hello world", 1.0),  # lower-cased words; punctuation is not a word
        ("45 kilometers is 45000 meters.", "It is 45000 meters.", 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5)),
        ("one two", "three", 0.0),
        ("", "", 1.0),
        ("something", "", 0.0),
    ],
)
def test_rouge_l_f1_by_hand(reference, candidate, expected):
    assert abs(rouge_l(reference, candidate) - expected) < 1e-12


def test_lcs_and_exact_match():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS's example
    assert exact_match("He goes to the park.", "  He goes to   the park. ")
    assert not exact_match("He goes to the park.", "he goes to the park.")


@pytest.mark.parametrize(
    "answer, score",
    [
        ("85", 85), ("Score: 85/100", 85), ("I'd give it 90.", 90), ("**72**", 72), ("8/10", 80),
        ("90 out of 100", 90), ("On a scale from 0 to 100, I rate it 65.", 65), ("77.6", 78),
        ("150", None), ("-5", None), ("no idea", None), ("", None), (None, None),
    ],
)
def test_parse_score_reads_messy_judge_answers(answer, score):
    assert parse_score(answer) == score


def test_judge_prompt_is_the_books():
    prompt = judge_prompt({"instruction": "Convert 45 kilometers to meters.", "input": "",
                           "output": "45 kilometers is 45000 meters.", "model_response": "45000 meters."})
    assert prompt == (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nConvert 45 kilometers to meters.` and correct output "
        "`45 kilometers is 45000 meters.`, score the model response `45000 meters.` on a scale from 0 to 100, "
        "where 100 is the best score. Respond with the integer number only."
    )


class _StubJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that answers with the next canned reply."""

    replies: list[str] = []
    requests: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        reply = type(self).replies[(len(type(self).requests) - 1) % len(type(self).replies)]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def judge_server():
    _StubJudge.replies, _StubJudge.requests = ["Score: 85/100", "**72**", "I cannot score this."], []
    server = HTTPServer(("127.0.0.1", 0), _StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


RESPONSES = [
    {"instruction": "Edit the sentence.", "input": "He go home.", "output": "He goes home.", "model_response": "He goes home."},
    {"instruction": "Convert 45 kilometers to meters.", "input": "", "output": "45 kilometers is 45000 meters.",
     "model_response": "It is 45000 meters."},
    {"instruction": "Name a color.", "input": "", "output": "Blue", "model_response": "Green"},
]


def test_evaluate_responses_with_a_stub_judge(tmp_path, judge_server, capsys):
    data = write(tmp_path / "responses.json", RESPONSES)
    report = evaluate_responses(data, judge_url=judge_server, judge_model="stub-judge", out=tmp_path / "r.json",
                                progress=False)
    assert report["rouge_l_f1"] == pytest.approx((1.0 + 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5) + 0.0) / 3)
    assert report["exact_match"] == pytest.approx(1 / 3)
    assert report["judge"] == {"model": "stub-judge", "url": judge_server, "mean_score": 78.5, "n_scored": 2,
                               "n_unparsed": 1}
    assert [r["judge_score"] for r in report["records"]] == [85, 72, None]
    path, body = _StubJudge.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "stub-judge" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": judge_prompt(RESPONSES[0])}]
    assert json.loads((tmp_path / "r.json").read_text())["judge"]["mean_score"] == 78.5
    # the CLI prints the same figures
    assert main(["evaluate", "responses", "--data", data, "--judge-url", judge_server + "/v1",
                 "--judge-model", "stub-judge"]) == 0
    out = capsys.readouterr().out
    assert "exact match        0.3333" in out
    assert "judge mean score   78.50 / 100 (stub-judge; 2 scored, 1 without a number)" in out


def test_evaluate_responses_errors(tmp_path, capsys):
    data = write(tmp_path / "responses.json", [{"instruction": "a", "output": "b"}])
    assert main(["evaluate", "responses", "--data", data]) == 2
    assert capsys.readouterr().err == f"scratchllm evaluate: error: {data}: record 0: missing field 'model_response'\n"
    data = write(tmp_path / "ok.json", RESPONSES)
    with pytest.raises(ScratchLLMError, match=r"^judge http://127\.0\.0\.1:9/v1/chat/completions: cannot connect"):
        evaluate_responses(data, judge_url="http://127.0.0.1:9", judge_model="x", timeout=5, progress=False)


# --------------------------------------------------------------------------------------------------
# responses


def test_respond_is_greedy_generation_with_the_stored_style(tmp_path, tokenizer, records):
    model = tiny_model(tokenizer.vocab_size, seed=4)
    save_model(model, tmp_path / "m", tokenizer, extra={"prompt_style": "phi3"})
    data = write(tmp_path / "test.json", records[:3])
    assert main(["respond", "--model", str(tmp_path / "m"), "--data", data, "--out", str(tmp_path / "r.json"),
                 "--max-new-tokens", "12", "--batch-size", "2", "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [{k: v for k, v in r.items() if k != "model_response"} for r in saved] == records[:3]
    phi3 = get_style("phi3")
    for record, result in zip(records[:3], saved):
        prompt = phi3.format_instruction(record["instruction"], record["input"])
        alone = generate(model, tokenizer, prompt, max_new_tokens=12, temperature=0.0, stop=phi3.stop_strings)
        assert result["model_response"] == alone.strip()


def test_respond_stops_at_end_of_text(tokenizer, records):
    model = tiny_model(tokenizer.vocab_size, tie_embeddings=False)
    with torch.no_grad():  # a head that always predicts <|endoftext|>
        model.out_head.weight.zero_()
        model.out_head.weight[tokenizer.eot_id] = 1.0
        model.final_norm.bias.fill_(1.0)
        model.final_norm.weight.zero_()
    out = respond(model, records[:2], tokenizer=tokenizer, max_new_tokens=5, progress=False)
    assert [r["model_response"] for r in out] == ["", ""]


# --------------------------------------------------------------------------------------------------
# the recipes end to end (CLI), full fine-tuning and LoRA, then DPO


def test_finetune_instruct_full_and_lora_then_dpo(tmp_path, model_dir, records, preferences, capsys):
    data = write(tmp_path / "data.json", records[:24])
    common = ["--data", data, "--epochs", "1", "--batch-size", "4", "--lr", "3e-3", "--device", "cpu",
              "--model", str(model_dir), "--eval-every", "5"]
    assert main(["finetune", "instruct", *common, "--out", str(tmp_path / "full"), "--mask-prompt"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 20, "val": 2, "test": 2} and summary["steps"] == 5
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.3
    assert len(json.loads((tmp_path / "full" / "test.json").read_text())) == 2
    assert read_model_config(tmp_path / "full")["prompt_style"] == "alpaca"

    assert main(["finetune", "instruct", *common, "--out", str(tmp_path / "lora"), "--lora-rank", "4",
                 "--prompt-style", "phi3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trainable_parameters"] == 8192
    # final/ holds merged plain weights that any loader reads; adapter/ the adapters alone; the step
    # checkpoint holds base + adapter tensors: all three give the same logits
    final, _ = load(tmp_path / "lora")
    config = read_model_config(tmp_path / "lora")
    assert config["prompt_style"] == "phi3" and config["lora_merged"]["rank"] == 4
    step, _ = load(tmp_path / "lora" / "checkpoints" / "step-0000005")
    base, _ = load(model_dir)
    adapted = load_adapters(base, tmp_path / "lora" / "adapter").eval()
    idx = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(step(idx), final(idx), atol=1e-5, rtol=0)
        torch.testing.assert_close(adapted(idx), final(idx), atol=1e-5, rtol=0)

    prefs = write(tmp_path / "prefs.json", preferences[:16])
    assert main(["finetune", "dpo", "--model", str(tmp_path / "full"), "--data", prefs, "--out", str(tmp_path / "dpo"),
                 "--batch-size", "4", "--lr", "1e-3", "--epochs", "2", "--device", "cpu", "--eval-every", "6"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 13, "val": 2, "test": 1} and summary["steps"] == 6
    assert summary["eval_before"]["val_pref_accuracy"] == 0.0
    assert summary["eval_after"]["val_pref_accuracy"] == 1.0  # 2 validation pairs
    assert summary["eval_after"]["val_loss"] < math.log(2)
    assert read_model_config(tmp_path / "dpo")["prompt_style"] == "alpaca"  # taken from the starting model


def test_the_readme_python_call_trains_lora_with_its_settings(tmp_path, model_dir, records):
    """README's `finetune_instruct(InstructConfig(model=..., lora_rank=16, lora_alpha=32, lr=1e-3))`:
    the flat keywords reach the LoRA and training groups, and the run records them."""
    from scratchllm.recipes.config import InstructConfig
    from scratchllm.recipes.instruct import finetune_instruct

    data = write(tmp_path / "data.json", records[:12])
    summary = finetune_instruct(InstructConfig(model=str(model_dir), data=data, out=str(tmp_path / "sft"), lora_rank=2,
                                               lora_alpha=8, lr=1e-3, epochs=1, batch_size=4, device="cpu"))
    assert summary["exit_code"] == 0 and summary["steps"] == 2  # 10 training records, batches of 4
    run = json.loads((tmp_path / "sft" / "run_config.json").read_text())
    assert (run["train"]["lr"], run["train"]["min_lr"], run["train"]["batch_size"]) == (1e-3, 1e-3, 4)
    assert (run["lora"]["rank"], run["lora"]["alpha"]) == (2, 8.0)
    assert read_model_config(tmp_path / "sft")["lora_merged"]["rank"] == 2


def test_finetune_instruct_rejects_bad_data_on_one_line(tmp_path, model_dir, capsys):
    data = write(tmp_path / "bad.json", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 5}])
    assert main(["finetune", "instruct", "--model", str(model_dir), "--data", data, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"scratchllm finetune: error: {data}: record 1: field 'output' must be a string, got int\n"
    )
    assert not (tmp_path / "o").exists()
