"""The recipes' options, one dataclass each, declared once: the CLI's flags are generated from these
fields (type, default and the help text beside each field), and each recipe takes its config whole.
Torch-free, so `scratchllm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

BALANCE = ("undersample", "weights", "none")



@dataclass
class ClassifyConfig:
    """Everything `finetune_classifier` needs; the CLI flags map one to one onto these fields."""

    model: str = "gpt2"  # model directory, run directory or GPT-2 name to start from
    data: str | None = None  # labelled TSV/CSV/JSONL file; None or "sms-spam" = the UCI SMS Spam Collection
    out: str = "runs/classify"
    text_column: str = "text"
    label_column: str = "label"
    format: str | None = None  # tsv | csv | jsonl | json; None = from the file name
    header: bool | None = None  # TSV/CSV header row: None = detect
    val: str | None = None  # validation file (same columns); None = carved out of `data`
    test: str | None = None  # test file; None = carved out of `data`
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/validation/test fractions of `data`
    balance: str = "undersample"  # undersample (the book) | weights (loss weighting) | none
    epochs: float = 5.0  # passes over the training split
    batch_size: int = 8
    lr: float = 5e-5
    min_lr: float | None = None  # end of the cosine decay; None = lr (constant, as in the book)
    warmup_steps: int = 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    trainable: str = "last-block"  # head | last-block | all | lora
    lora_rank: int = 8
    lora_alpha: float = 16.0
    pooling: str = "last"  # last | mean | first
    lm_weight: float = 0.0  # auxiliary language-modelling loss weight (Radford et al. 2018 use 0.5)
    max_length: int | None = None  # truncate texts to this many tokens (default: the model's context)
    dropout: float | None = None  # replace the model's dropout rate while fine-tuning
    seed: int = 123  # head init, batch order (and balancing and split unless split_seed is set)
    split_seed: int | None = None  # balancing and split only: vary training seeds over one test set
    device: str = "auto"
    dtype: str = "auto"
    max_time: float | None = None  # seconds; stops early, cleanly
    eval_batch_size: int = 32
    resume: bool = False
    progress: bool = True

