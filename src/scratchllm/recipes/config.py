"""The recipes' options, one dataclass each, declared once: the CLI's flags are generated from these
fields (type, default and the help text below each field), and each recipe takes its config whole.
Torch-free, so `scratchllm --help` stays fast. The training loop's own options are
`training.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchllm.core.options import check_fields
from scratchllm.inference.config import PromptStyleName


@dataclass(kw_only=True)
class PretrainConfig:
    """What `scratchllm pretrain` trains on and where it writes; how it trains is a TrainConfig."""

    data: str | None = None
    """a UTF-8 text file (split in memory) or a DATADIR from `scratchllm prepare`"""
    model: str | None = None
    """a preset name or a config.json (vocab_size comes from the tokenizer)"""
    out: str | None = None
    """the run directory to write"""
    tokenizer: str | None = None
    """'gpt2' (the default), a tokenizer .json file or a model directory; a resumed run keeps its own"""
    config: str | None = None
    """a run file (.toml / .json / .yaml) with train settings and optionally data, model, tokenizer, out; flags win"""
    val_fraction: float | None = None
    """validation share of a text file (default 0.1); a resumed run keeps its own"""
    resume: bool | str = False
    """continue the newest checkpoint of --out (or of the run directory given); settings not given again
    come from its run_config.json"""
    objective: Literal["lm", "mlm", "seq2seq"] | None = None
    """lm: a next-token GPT (the default); mlm: a BERT-style masked-language encoder; seq2seq: an
    encoder-decoder on a source<TAB>target --data file"""

    def __post_init__(self) -> None:
        check_fields(self, "pretrain")


@dataclass(kw_only=True)
class DemoConfig:
    """`scratchllm demo` (recipes/demo.py `demo`): the small-budget recipe end to end. The model and
    training fields left as None keep the recipe's values (SMALL_BUDGET)."""

    out: str = "runs/demo"
    """run directory to write"""
    data: str | None = None
    """your own UTF-8 text instead of Python's standard library (its last 10% held out)"""
    minutes: float = 3.0
    """wall-time budget: tokenizer, data and training"""
    max_steps: int | None = None
    """train this many steps instead of fitting the budget"""
    device: str = "auto"
    """auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """autocast dtype (bfloat16 pays only where the CPU has native bf16, or on GPUs)"""
    overwrite: bool = False
    """replace an existing demo run directory"""
    prompt: str | None = None
    """prompt of the before/after samples (default: 'def ' on the built-in corpus, 'The' with data)"""
    vocab_size: int | None = None
    """tokenizer vocabulary (default: the recipe's)"""
    layers: int | None = None
    """transformer blocks (default: the recipe's)"""
    emb_dim: int | None = None
    """model width (default: the recipe's)"""
    heads: int | None = None
    """attention heads (default: the recipe's)"""
    context_length: int | None = None
    """tokens per sequence (default: the recipe's)"""
    batch_size: int | None = None
    """sequences per step (default: the recipe's)"""
    lr: float | None = None
    """AdamW's peak learning rate (default: the recipe's)"""

    def __post_init__(self) -> None:
        check_fields(self, "demo")


@dataclass(kw_only=True)
class ClassifyConfig:
    """Everything `finetune_classifier` needs (`scratchllm finetune classify`)."""

    model: str = "gpt2"
    """model directory, run directory or GPT-2 name to start from"""
    data: str | None = None
    """labelled TSV/CSV/JSONL/JSON file, or sms-spam (the UCI SMS Spam Collection, downloaded once; the default)"""
    out: str = "runs/classify"
    """run directory to write (final/ holds the classifier)"""
    text_column: str = "text"
    """text column: header name / JSON key, or 0-based position without a header"""
    label_column: str = "label"
    """label column, as text_column (a headerless two-column file is label, text)"""
    format: Literal["tsv", "csv", "jsonl", "json"] | None = None
    """file format (default: from the file name)"""
    header: bool | None = None
    """the TSV/CSV file has a header row (default: detect)"""
    val: str | None = None
    """validation file with the same columns (default: carved out of data)"""
    test: str | None = None
    """test file (default: carved out of data)"""
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """train, validation, test fractions of data (stratified, seeded)"""
    balance: Literal["undersample", "weights", "none"] = "undersample"
    """undersample every class to the smallest (the book), or weight the loss by inverse class frequency"""
    epochs: float = 5.0
    """passes over the training split"""
    batch_size: int = 8
    """texts per step"""
    lr: float = 5e-5
    """AdamW learning rate"""
    min_lr: float | None = None
    """cosine-decay the learning rate to this (default: constant, as in the book)"""
    warmup_steps: int = 0
    """linear warmup steps"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices"""
    grad_clip: float = 1.0
    """max global gradient norm (0: no clipping)"""
    trainable: Literal["head", "last-block", "all", "lora"] = "last-block"
    """what trains: the head; the last block + final norm + head; everything; LoRA adapters + head"""
    lora_rank: int = 8
    """LoRA rank r (with trainable lora)"""
    lora_alpha: float = 16.0
    """LoRA alpha (with trainable lora)"""
    pooling: Literal["last", "mean", "first"] = "last"
    """which hidden state the head reads: the last real token, the mean of the real tokens, or the first"""
    lm_weight: float = 0.0
    """add this times the next-token loss of the texts (Radford et al. 2018's auxiliary objective uses 0.5)"""
    max_length: int | None = None
    """truncate texts to this many tokens (default: the model's context length)"""
    dropout: float | None = None
    """dropout rate while fine-tuning (default: the model's)"""
    seed: int = 123
    """seed of balancing, split, head init and batch order"""
    split_seed: int | None = None
    """seed of balancing and split only (default: seed), to vary training seeds over one test set"""
    device: str = "auto"
    """auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """autocast dtype (auto: bf16 on CUDA)"""
    max_time: float | None = None
    """stop cleanly after this many seconds"""
    eval_batch_size: int = 32
    """texts per forward pass when evaluating"""
    resume: bool = False
    """continue the newest checkpoint in out"""
    progress: bool = True
    """progress bar on stderr"""

    def __post_init__(self) -> None:
        check_fields(self, "classify")


DEFAULT_LORA_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]


@dataclass(kw_only=True)
class FinetuneConfig:
    """The options instruction tuning and DPO share (`scratchllm finetune instruct|dpo`)."""

    model: str
    """model directory, run directory or hub name to start from"""
    data: str
    """JSON/JSONL records (split 85/5/10, seeded, unless val/test are given)"""
    out: str
    """run directory to write (final/, and test.json for `respond`)"""
    lora_rank: int | None = None
    """train LoRA adapters of this rank instead of all weights"""
    lora_alpha: float = 16.0
    """LoRA scale alpha (the update is alpha/r * B A)"""
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """linear layers that get adapters (comma-separated on the command line)"""
    lora_dropout: float = 0.0
    """dropout on the adapters' input"""
    epochs: int = 2
    """passes over the training split"""
    max_steps: int | None = None
    """stop after this many steps instead (default: epochs x batches per epoch)"""
    batch_size: int = 8
    """records per step"""
    lr: float = 5e-5
    """AdamW learning rate (constant after warmup, as in the book)"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices"""
    warmup_steps: int = 0
    """linear warmup steps"""
    max_length: int | None = None
    """truncate examples to this many tokens (default: the model's context length)"""
    val: str | None = None
    """validation file (default: 5% of data)"""
    test: str | None = None
    """test file (default: 10% of data)"""
    seed: int = 123
    """seed of the split, the adapters' init and the batch order"""
    eval_every: int | None = None
    """validate every N steps (default: four times per epoch)"""
    device: str = "auto"
    """auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """autocast dtype (auto: bf16 on CUDA)"""
    max_time: float | None = None
    """stop cleanly after this many seconds"""
    compile: bool = False
    """torch.compile the loss computation"""
    resume: bool = False
    """continue the newest checkpoint in out"""

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__.removesuffix("Config").lower())


@dataclass(kw_only=True)
class InstructConfig(FinetuneConfig):
    """Instruction fine-tuning on {instruction, input, output} or {messages} records."""

    prompt_style: PromptStyleName | None = None
    """prompt layout, stored with the model (default: the base model's stored one, else its chat template
    (template), else alpaca)"""
    mask_prompt: bool = False
    """learn the response only (the prompt's targets are ignored)"""


@dataclass(kw_only=True)
class DPOConfig(FinetuneConfig):
    """Direct Preference Optimization on {instruction, input, chosen, rejected} records."""

    beta: float = 0.1
    """how far the policy may move from the reference"""
    prompt_style: PromptStyleName | None = None
    """prompt layout (default: the model's stored one, else its chat template (template), else alpaca)"""
    epochs: int = 1
    """passes over the training split"""
    lr: float = 5e-6
    """AdamW learning rate (the book's DPO appendix)"""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices"""
