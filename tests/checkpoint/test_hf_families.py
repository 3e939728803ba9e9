"""Today's Hugging Face families against `transformers`: Llama 3.x (rotary scaling, tied head,
grouped-query attention; SmolLM2 is this class too), Qwen2.5 (q/k/v biases) and Qwen3 (query/key
norms, heads wider than hidden_size / heads).

Random models built with transformers (seeded, parameters moved off their init so that a misplaced
norm or bias shows) must import with the same logits, decode the same greedy tokens through our KV
cache, export back to the same logits in transformers, and decode in bfloat16; settings we do not
model are one-line errors; hub names download once, through a loopback server standing in for the
hub (never the network).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
import transformers

from scratchllm.checkpoint import hf
from scratchllm.checkpoint.convert import export_hf
from scratchllm.checkpoint.hf import HUB_MANIFEST
from scratchllm.checkpoint.hf_families import config_from_hf
from scratchllm.checkpoint.loader import load
from scratchllm.checkpoint.model_dir import read_model_config, save_model
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.generation import generate_ids
from scratchllm.models.config import GPTConfig
from scratchllm.models.gpt import GPT

transformers.logging.set_verbosity_error()

VOCAB = 300
_SHAPE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
              initializer_range=0.2)  # 10x the usual: attention that is sharp enough for positions to matter
# family: (transformers config class, its settings). Llama 3's scaling with an original context of 64
# positions puts this head size's frequencies in all three of its regimes (kept, blended, slowed).
FAMILIES = {
    "llama3": ("LlamaConfig", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen3": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
}
ARCHITECTURES = {"llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hf_model(family: str, seed: int = 0):
    config_class, settings = FAMILIES[family]
    config = getattr(transformers, config_class)(**_SHAPE, **settings)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norm scales and biases start at 1 and 0: move them so a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory):
    """(family, transformers model, its save_pretrained directory), built once per family."""
    model = hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    return request.param, model, directory


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=steps,
                         min_new_tokens=steps, pad_token_id=0)
    return out[0, len(prompt):].tolist()


# --------------------------------------------------------------------------------------------------
# Import: logits and greedy decoding


def test_import_gives_transformers_logits(family_dir):
    family, theirs, d = family_dir
    ours = load(d)[0]
    c = ours.config
    assert (c.norm, c.position, c.mlp, c.n_kv_heads) == ("rmsnorm", "rope", "swiglu", 2)
    assert (c.qk_norm, c.head_dim) == ((True, 32) if family == "qwen3" else (False, 16))
    assert (c.qkv_bias, c.bias) == ((True, False) if family == "qwen2" else (False, False))
    assert c.tie_embeddings == (family != "qwen3")
    assert (c.rope_scaling is not None) == (family == "llama3")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 120))
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)
    assert expected.std() > 0.1  # a real comparison, not of two near-zero tensors
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    if family == "llama3":  # the scaling matters: without it the logits are another model's
        plain = GPT(GPTConfig.from_dict({**c.to_dict(), "rope_scaling": None})).eval()
        plain.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (plain(ids) - expected).abs().max() > 1e-2


def test_greedy_decoding_through_our_kv_cache_matches_transformers_generate(family_dir):
    family, theirs, d = family_dir
    ours = load(d)[0]
    prompts = [[5, 17, 42, 99, 3, 250, 7], [11, 12, 13]]  # different lengths: the batch is left-padded
    expected = [hf_greedy(theirs, p, 30) for p in prompts]
    assert generate_ids(ours, prompts, max_new_tokens=30, temperature=0) == expected
    assert len(set(expected[0])) > 3  # not one token repeated: the decode loop really followed the model


def test_bfloat16_decoding_runs_and_stays_close(family_dir):
    family, theirs, d = family_dir
    full, half = load(d)[0], load(d, dtype="bfloat16")[0]
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, 80))
    with torch.no_grad():
        a, b = full(ids), half(ids).float()
    assert (a - b).abs().mean() < 0.05 * a.abs().mean()  # bfloat16 keeps 8 bits of mantissa: ~2% here
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    prompt = ids[0, :9].tolist()
    tokens = generate_ids(half, [prompt], max_new_tokens=20, temperature=0)[0]
    assert len(tokens) == 20 and all(0 <= t < VOCAB for t in tokens)
    assert tokens[:3] == generate_ids(full, [prompt], max_new_tokens=3, temperature=0)[0]


# --------------------------------------------------------------------------------------------------
# Export: our model back to the family's transformers class


def test_export_gives_the_family_back_with_the_same_logits(family_dir, tmp_path):
    family, theirs, d = family_dir
    model = load(d)[0]
    save_model(model, tmp_path / "ours")
    assert GPTConfig.from_dict(read_model_config(tmp_path / "ours")["model"]) == model.config
    export_hf(tmp_path / "ours", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[family]]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(again).__name__ == ARCHITECTURES[family]
    assert again.config.tie_word_embeddings == theirs.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (2, 70))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, theirs(ids).logits, atol=1e-5, rtol=0)
    back = load(tmp_path / "hf")[0]  # and in again: the same config
    assert back.config == model.config


@pytest.mark.parametrize("overrides, message", [
    (dict(norm="layernorm", bias=True), "the closest, Llama (LlamaForCausalLM), needs norm 'rmsnorm' (got 'layernorm')"),
    (dict(qk_norm=True, qkv_bias=False, bias=True),
     "the closest, Qwen3 (Qwen3ForCausalLM), needs no biases (got qkv_bias False, bias True)"),
    (dict(qk_norm=True, mlp="relu2"), "the closest, Qwen3 (Qwen3ForCausalLM), needs mlp 'swiglu' (got 'relu2')"),
    (dict(norm="layernorm", position="learned", mlp="swiglu"),
     "the closest, GPT-2 (GPT2LMHeadModel), needs mlp 'gelu' or 'relu2' (got 'swiglu')"),
    (dict(position="learned"), "the closest, Llama (LlamaForCausalLM), needs position 'rope' (got 'learned')"),
    (dict(position="learned", norm="layernorm", mlp="gelu", bias=True, qkv_bias=True, n_kv_heads=None, head_dim=64),
     "the closest, GPT-2 (GPT2LMHeadModel), needs head_dim emb_dim / n_heads (got 64)"),
])
def test_export_refuses_a_model_no_family_holds(tmp_path, overrides, message):
    config = GPTConfig.from_preset("llama-tiny", vocab_size=VOCAB, **overrides)
    save_model(GPT(config), tmp_path / "ours")
    with pytest.raises(ScratchLLMError) as info:
        export_hf(tmp_path / "ours", tmp_path / "hf")
    assert str(info.value) == f"export: no Hugging Face family holds this model; {message}"
    assert not (tmp_path / "hf").exists()


# --------------------------------------------------------------------------------------------------
# Settings we do not model: one line naming them


@pytest.mark.parametrize("family, setting, message", [
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "unsupported Llama setting rope type 'yarn' (only default and llama3)"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
     "unsupported Llama setting rope type 'linear' (only default and llama3)"),
    ("llama", {"partial_rotary_factor": 0.5},
     "unsupported Llama setting partial_rotary_factor 0.5 (rotary positions on every channel only)"),
    ("llama", {"attention_bias": True}, "unsupported Llama setting attention_bias true with mlp_bias false (only both or neither)"),
    ("llama", {"hidden_act": "gelu"}, "unsupported Llama setting hidden_act 'gelu' (only silu)"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4096},
     "unsupported Qwen2 setting use_sliding_window true (sliding-window attention)"),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"]},
     "unsupported Qwen2 setting layer_types ['full_attention', 'sliding_attention'] (only full_attention)"),
    ("qwen3", {"attention_bias": True}, "unsupported Qwen3 setting attention_bias true (biases on q/k/v/o but not the MLP)"),
    ("qwen3", {"num_key_value_heads": 3}, "config: n_heads (4) must be a multiple of n_kv_heads (3)"),
    # types as transformers' config classes check them: a string is not a bool, a float not an int
    ("qwen3", {"head_dim": "32"}, "field 'head_dim' is '32' (str); expected an integer"),
    ("llama", {"tie_word_embeddings": "false"}, "field 'tie_word_embeddings' is 'false' (str); expected true or false"),
    ("qwen2", {"attention_bias": 1}, "field 'attention_bias' is 1 (int); expected true or false"),
    ("llama", {"hidden_size": 64.0}, "field 'hidden_size' is 64.0 (float); expected an integer"),
    ("llama", {"num_key_value_heads": True}, "field 'num_key_value_heads' is True (bool); expected an integer"),
    ("llama", {"rms_norm_eps": "1e-6"}, "field 'rms_norm_eps' is '1e-6' (str); expected a number"),
    ("qwen2", {"layer_types": 5}, "field 'layer_types' is 5 (int); expected a list"),
    ("qwen2", {"layer_types": [{"a": 1}]}, "field 'layer_types' is [{'a': 1}]; expected a list of strings"),
    ("gpt2", {"scale_attn_weights": "no"}, "field 'scale_attn_weights' is 'no' (str); expected true or false"),
    ("gpt2", {"n_embd": 64.0}, "field 'n_embd' is 64.0 (float); expected an integer"),
    ("mistral", {}, "model_type is 'mistral'; only 'gpt2', 'llama', 'qwen2', 'qwen3', 'arcee', 'starcoder2', 'stablelm' models can be imported"),
    ("starcoder2", {"use_bias": "yes"}, "field 'use_bias' is 'yes' (str); expected true or false"),
    ("stablelm", {"layer_norm_eps": "1e-5"}, "field 'layer_norm_eps' is '1e-5' (str); expected a number"),
    ("llama", {"model_type": ["llama"]},
     "model_type is ['llama']; only 'gpt2', 'llama', 'qwen2', 'qwen3', 'arcee', 'starcoder2', 'stablelm' models can be imported"),
])
def test_unsupported_settings_are_one_line_errors(family, setting, message):
    h = {"model_type": family, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100,
         "intermediate_size": 128, **setting}
    with pytest.raises(ScratchLLMError) as info:
        config_from_hf(h, source="x/config.json")
    assert str(info.value) == f"x/config.json: {message}"


def test_unsupported_setting_in_a_directory_stops_the_load(tmp_path):
    hf_model("qwen2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=16)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScratchLLMError, match=r"config.json: unsupported Qwen2 setting use_sliding_window true"):
        load(tmp_path)


# --------------------------------------------------------------------------------------------------
# Hub names: downloaded once, through a loopback server that answers as the hub does


class _Hub(http.server.BaseHTTPRequestHandler):
    """GET /OWNER/NAME/resolve/main/FILE from `root`. Weights (.safetensors) redirect to /cdn/ with the
    file's SHA-256 and size in X-Linked-Etag / X-Linked-Size, as the hub does for LFS files; small
    files come directly with a git-sha1 ETag and their Content-Length. A missing file is 404, a
    missing repository 401 (the hub's answer when it will not say whether a repository exists)."""

    root: Path
    requests: list[str]
    served: dict[str, bytes] = {}  # path -> bytes served instead of the file's (a corrupt transfer)
    lengths: dict[str, int] = {}  # path -> Content-Length announced instead of the true one

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/cdn/"):
            path = self.root / self.path.removeprefix("/cdn/")
            return self._send(path, self.served.get(self.path.removeprefix("/cdn/"), path.read_bytes()))
        parts = self.path.strip("/").split("/")
        if len(parts) != 5 or parts[2:4] != ["resolve", "main"]:
            return self.send_error(400)
        repo, file = "/".join(parts[:2]), parts[4]
        if not (self.root / repo).is_dir():
            return self.send_error(401)
        path = self.root / repo / file
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        if file.endswith(".safetensors"):
            self.send_response(302)
            self.send_header("Location", f"/cdn/{repo}/{file}")
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.end_headers()
            return
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self._send(path, self.served.get(f"{repo}/{file}", data), etag)

    def _send(self, path: Path, data: bytes, etag: str | None = None):
        self.send_response(200)
        key = str(path.relative_to(self.root))
        self.send_header("Content-Length", str(self.lengths.get(key, len(data))))
        if etag:
            self.send_header("ETag", f'"{etag}"')
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """(root folder of the fake hub's repositories, request log); scratchllm's cache in tmp_path/cache."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root, requests = tmp_path / "hub", []
    root.mkdir()
    handler = type("Hub", (_Hub,), {"root": root, "requests": requests, "served": {}, "lengths": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf, "HF_URL", f"http://127.0.0.1:{server.server_address[1]}/{{name}}/resolve/main/{{file}}")
    try:
        yield root, requests, handler
    finally:
        server.shutdown()
        server.server_close()


def publish(root: Path, repo: str, family: str, sharded: bool, shared_data: Path):
    """A transformers model and a real tokenizer (trained on the-verdict.txt) in root/REPO, as on the hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    model = hf_model(family)
    d = root / repo
    model.save_pretrained(d, max_shard_size="40KB" if sharded else "50GB")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([(shared_data / "the-verdict.txt").read_text(encoding="utf-8")],
                            trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(d)
    (d / "chat_template.jinja").unlink(missing_ok=True)  # an optional file this repository lacks
    return model, d


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_hub_name_downloads_once_into_the_cache(hub, shared_data, sharded):
    root, requests, _ = hub
    theirs, repo_dir = publish(root, "acme/Tiny-Qwen2", "qwen2", sharded, shared_data)
    shards = sorted(p.name for p in repo_dir.glob("model*.safetensors"))
    assert (len(shards) > 1) == sharded and (repo_dir / "model.safetensors.index.json").is_file() == sharded
    ours = load("acme/Tiny-Qwen2")[0]
    cached = hf.cache_dir() / "hf" / "acme--Tiny-Qwen2"
    assert sorted(p.name for p in cached.iterdir()) == sorted([p.name for p in repo_dir.iterdir()] + [HUB_MANIFEST])
    for p in repo_dir.iterdir():
        assert (cached / p.name).read_bytes() == p.read_bytes(), p.name
    manifest = json.loads((cached / HUB_MANIFEST).read_text())
    assert manifest["repo"] == "acme/Tiny-Qwen2" and "chat_template.jinja" in manifest["missing"]
    assert manifest["optional_files"] == [f for f in hf.HUB_OPTIONAL_FILES if (repo_dir / f).is_file()]
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(manifest["optional_files"])
    ids = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=0)
    asked = len(requests)
    assert asked >= len(shards) + 3
    again = load("acme/Tiny-Qwen2", dtype="bfloat16")[0]  # from the cache alone
    assert len(requests) == asked
    assert torch.equal(again.tok_emb.weight, ours.tok_emb.weight.to(torch.bfloat16))


def test_hub_download_is_checked_and_resumes_without_broken_files(hub, shared_data):
    root, requests, handler = hub
    publish(root, "acme/tiny", "llama3", False, shared_data)
    handler.served["acme/tiny/model.safetensors"] = b"\0" * (root / "acme/tiny/model.safetensors").stat().st_size
    with pytest.raises(ScratchLLMError) as info:
        load("acme/tiny")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("'acme/tiny': no such directory, and fetching it from the Hugging Face hub failed: "
                              "download http://127.0.0.1:")
    assert "/acme/tiny/resolve/main/model.safetensors: SHA-256 is " in message
    assert message.endswith("`hf download acme/tiny --local-dir DIR` (after `hf auth login` and accepting its licence) "
                            "and pass DIR")
    cached = hf.cache_dir() / "hf" / "acme--tiny"
    assert sorted(p.name for p in cached.iterdir()) == ["config.json"]  # checked files only, and no manifest
    del handler.served["acme/tiny/model.safetensors"]
    handler.lengths["acme/tiny/tokenizer.json"] = (root / "acme/tiny/tokenizer.json").stat().st_size + 10
    with pytest.raises(ScratchLLMError, match=r"tokenizer.json: "):  # a small file cut short: its size
        load("acme/tiny")
    assert HUB_MANIFEST not in {p.name for p in cached.iterdir()}
    del handler.lengths["acme/tiny/tokenizer.json"]
    requests.clear()
    load("acme/tiny")
    assert not any(r.endswith(("/config.json", "/model.safetensors")) for r in requests)  # kept from before
    assert (cached / HUB_MANIFEST).is_file()


@pytest.mark.parametrize("name, message", [
    ("acme/none", "'acme/none': no such directory, and fetching it from the Hugging Face hub failed: download "
                  "http://HUB/acme/none/resolve/main/config.json: Unauthorized; if the hub refuses (no network; a "
                  "gated or private model, such as meta-llama's), fetch it with `hf download acme/none --local-dir DIR` "
                  "(after `hf auth login` and accepting its licence) and pass DIR"),
    ("acme/empty", "acme/empty: the hub has neither model.safetensors nor model.safetensors.index.json (only "
                   "safetensors weights are downloaded)"),
    ("a/b/c", "a/b/c: no such directory"),
])
def test_hub_name_that_cannot_be_fetched_is_one_line(hub, name, message):
    root, _, _ = hub
    (root / "acme" / "empty").mkdir(parents=True)
    (root / "acme" / "empty" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 100}))
    with pytest.raises(ScratchLLMError) as info:
        load(name)
    assert str(info.value) == message.replace("HUB", hf.HF_URL.split("/")[2])


def test_hub_model_we_cannot_run_stops_before_its_weights_are_fetched(hub, shared_data):
    root, requests, _ = hub
    _, d = publish(root, "acme/windowed", "qwen2", False, shared_data)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "use_sliding_window": True, "sliding_window": 16}))
    with pytest.raises(ScratchLLMError, match=r"acme--windowed/config.json: unsupported Qwen2 setting use_sliding_window true"):
        load("acme/windowed")
    assert [r.rsplit("/", 1)[1] for r in requests] == ["config.json"]
