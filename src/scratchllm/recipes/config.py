"""The recipes' options, one dataclass each, made of the option groups of the layers below: training
(training/config.py `TrainConfig`, with each recipe's own defaults), LoRA and a model's shape
(models/config.py), labelled data (data/config.py). The CLI's flags are generated from these fields
(type, default and the help text below each field), and each recipe takes its config whole; the
constructors also take the groups' fields by their flat names (`InstructConfig(lr=1e-3, lora_rank=16)`).
Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scratchllm.core.options import check_fields, composed, device_field, group
from scratchllm.data.config import LabelledConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.config import PromptStyleName, prompt_style_field
from scratchllm.models.config import GPTConfig, LoRAConfig, ModelShape
from scratchllm.training.config import AutocastDtype, TrainConfig


@composed
@dataclass(kw_only=True)
class PretrainConfig:
    """What `scratchllm pretrain` trains on and where it writes; how it trains is its TrainConfig.

    recipes/pretrain.py `resolve_pretrain` builds it from the flags (or keywords), a run file and the
    run being resumed, in that order of precedence: flags, the resumed run, the run file, these defaults.
    """

    data: str | None = None
    """a UTF-8 text file (split in memory) or a DATADIR from `scratchllm prepare`"""
    model: str | dict[str, Any] | GPTConfig | None = None
    """a preset name or a config.json (vocab_size comes from the tokenizer)"""
    out: str | None = None
    """the run directory to write"""
    tokenizer: str = "gpt2"
    """'gpt2', a tokenizer .json file or a model directory; a resumed run keeps its own"""
    config: str | None = None
    """a run file (.toml / .json / .yaml) with train settings and optionally data, model, tokenizer, out; flags win"""
    val_fraction: float = 0.1
    """validation share of a text file; a resumed run keeps its own"""
    resume: bool | str = False
    """continue the newest checkpoint of --out (or of the run directory given); settings not given again
    come from its run_config.json"""
    objective: Literal["lm", "mlm", "seq2seq"] = "lm"
    """lm: a next-token GPT; mlm: a BERT-style masked-language encoder; seq2seq: an encoder-decoder on a
    source<TAB>target --data file"""
    train: TrainConfig = group(TrainConfig)

    def __post_init__(self) -> None:
        check_fields(self, "pretrain")


@composed
@dataclass(kw_only=True)
class DemoConfig:
    """`scratchllm demo` (recipes/demo.py `demo`): the small-budget recipe end to end. The shape,
    batch_size and lr left as None keep the recipe's (SMALL_BUDGET)."""

    out: str = "runs/demo"
    """run directory to write"""
    data: str | None = None
    """your own UTF-8 text instead of Python's standard library (10% of it held out, in 20 stretches spread through it)"""
    minutes: float = 3.0
    """wall-time budget: tokenizer, data and training"""
    max_steps: int | None = None
    """train this many steps instead of fitting the budget"""
    device: str = device_field()
    dtype: AutocastDtype = "float32"
    """autocast dtype; auto: bf16 on CUDA, and on a CPU only where a measurement (a cached matmul probe,
    then the recipe's step in both dtypes) finds it faster; the run header says which and why"""
    overwrite: bool = False
    """replace an existing demo run directory"""
    prompt: str | None = None
    """prompt of the before/after samples (default: 'def ' on the built-in corpus, 'The' with data)"""
    shape: ModelShape = group(ModelShape)
    batch_size: int | None = None
    """sequences per step (default: the recipe's)"""
    lr: float | None = None
    """AdamW's peak learning rate (default: the recipe's)"""

    def __post_init__(self) -> None:
        check_fields(self, "demo")
        if not self.minutes > 0:
            raise ScratchLLMError(f"minutes {self.minutes!r}: expected a positive number")


# The TrainConfig fields the fine-tuning verbs offer as flags; the recipes set the rest from the data.
_TUNING_FLAGS = ("batch_size", "lr", "warmup_steps", "weight_decay", "seed", "device", "dtype", "max_time")


@composed
@dataclass(kw_only=True)
class ClassifyConfig:
    """Everything `finetune_classifier` needs (`scratchllm finetune classify`)."""

    model: str = "gpt2"
    """model directory, run directory or GPT-2 name to start from"""
    labelled: LabelledConfig = group(LabelledConfig)
    out: str = "runs/classify"
    """run directory to write (final/ holds the classifier)"""
    epochs: float = 5.0
    """passes over the training split (at most: see patience)"""
    trainable: Literal["head", "last-block", "all", "lora"] | None = None
    """what trains: the head; the last block + final norm + head; everything; LoRA adapters + head (default:
    last-block for a model as wide as GPT-2 small's 768 or wider, as in the book; all for a narrower one)"""
    lora: LoRAConfig = group(LoRAConfig, prefix="lora_", flags=("rank", "alpha"),
                             help={"rank": "LoRA rank r (with trainable lora)", "alpha": "LoRA alpha (with trainable lora)"})
    pooling: Literal["last", "mean", "first"] = "last"
    """which hidden state the head reads: the last real token, the mean of the real tokens, or the first"""
    lm_weight: float = 0.0
    """add this times the next-token loss of the texts (Radford et al. 2018's auxiliary objective uses 0.5)"""
    max_length: int | None = None
    """truncate texts to this many tokens (default: the model's context length)"""
    dropout: float | None = None
    """dropout rate while fine-tuning (default: the model's)"""
    eval_batch_size: int = 32
    """texts per forward pass when evaluating"""
    resume: bool = False
    """continue the newest checkpoint in out"""
    train: TrainConfig = group(
        TrainConfig, flags=(*_TUNING_FLAGS, "patience", "min_lr", "grad_clip"),
        batch_size=8, lr=None, min_lr=None, warmup_steps=0, patience=2, seed=123, max_steps=None, eval_every=None,
        help={"batch_size": "texts per step",
              "lr": "AdamW learning rate (default: 5e-5 x 768 / the model's width: the book's 5e-5 for GPT-2's 768, "
                    "3e-4 for a 128-wide model)",
              "min_lr": "cosine-decay the learning rate to this (default: constant, as in the book, for a model as wide "
                        "as GPT-2 small's 768 or wider; lr / 10 for a narrower one)",
              "patience": "stop after this many epochs without a lower validation loss; final/ then gets the weights "
                          "of the epoch with the lowest (0: train every epoch, final/ is the last)",
              "seed": "seed of balancing, split, head init and batch order",
              "dtype": "autocast dtype (auto: bf16 on CUDA)", "max_time": "stop cleanly after this many seconds"})

    def __post_init__(self) -> None:
        check_fields(self, "classify")


def _tuning(**defaults: Any) -> Any:
    """The TrainConfig group of `finetune instruct` and `finetune dpo`, with their defaults."""
    return group(
        TrainConfig, flags=(*_TUNING_FLAGS, "max_steps", "eval_every", "compile"),
        max_steps=None, eval_every=None, batch_size=8, min_lr=None, warmup_steps=0, seed=123, **defaults,
        help={"max_steps": "stop after this many steps instead (default: epochs x batches per epoch)",
              "batch_size": "records per step", "lr": "AdamW learning rate (constant after warmup, as in the book)",
              "eval_every": "validate every N steps (default: four times per epoch)",
              "seed": "seed of the split, the adapters' init and the batch order",
              "dtype": "autocast dtype (auto: bf16 on CUDA)", "max_time": "stop cleanly after this many seconds"})


_LORA_HELP = {"rank": "train LoRA adapters of this rank instead of all weights"}


@composed
@dataclass(kw_only=True)
class FinetuneConfig:
    """The options instruction tuning and DPO share (`scratchllm finetune instruct|dpo`)."""

    model: str
    """model directory, run directory or hub name to start from"""
    data: str
    """JSON/JSONL records (split 85/5/10, seeded, unless val/test are given)"""
    out: str
    """run directory to write (final/, and test.json for `respond`)"""
    lora: LoRAConfig | None = group(LoRAConfig, prefix="lora_", when="rank", flags=("rank", "alpha", "targets", "dropout"),
                                    help=_LORA_HELP)
    epochs: int = 2
    """passes over the training split"""
    max_length: int | None = None
    """truncate examples to this many tokens (default: the model's context length)"""
    val: str | None = None
    """validation file (default: 5% of data)"""
    test: str | None = None
    """test file (default: 10% of data)"""
    resume: bool = False
    """continue the newest checkpoint in out"""
    prompt_style: PromptStyleName | None = prompt_style_field("alpaca")
    train: TrainConfig = _tuning(lr=5e-5)

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__.removesuffix("Config").lower())


@composed
@dataclass(kw_only=True)
class InstructConfig(FinetuneConfig):
    """Instruction fine-tuning on {instruction, input, output} or {messages} records."""

    mask_prompt: bool = False
    """learn the response only (the prompt's targets are ignored)"""


@composed
@dataclass(kw_only=True)
class DPOConfig(FinetuneConfig):
    """Direct Preference Optimization on {instruction, input, chosen, rejected} records."""

    beta: float = 0.1
    """how far the policy may move from the reference"""
    epochs: int = 1
    """passes over the training split"""
    train: TrainConfig = _tuning(lr=5e-6, weight_decay=0.01)
