"""Masked-language modelling: the BERT-style encoder built from the GPT parts.

Where it sits: a second pretraining objective beside next-token prediction (`scratchllm pretrain
--objective mlm`), on the same tokenizer, data, model and training loop. The notes this project follows
contrast the two: GPT predicts the next word and attends only to earlier words; BERT (Devlin et al.
2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding") attends to
every word and predicts words hidden from it, which suits classification.

    text -> ids (tokenizer + <|mask|>) -> random windows -> mask_tokens (15% selected: 80% <|mask|>,
    10% a random token, 10% unchanged) -> GPT(causal=False) hidden states (B, T, C)
    -> the selected rows only (N, C) -> tied LM head (N, V) -> cross-entropy against the original ids

The encoder is `GPT` with `GPTConfig(causal=False)`: the same embeddings, blocks, final norm and
head, with the causal mask switched off. Its MLM head is simply the GPT's LM head (a linear map tied
to the token embedding), not BERT's extra dense + GELU + LayerNorm transform before the tied decoder:
our pre-norm body already ends in a norm (the transform's LayerNorm), and without new tensors the
trained encoder is a plain scratchllm model directory (config.json says "causal": false and
"objective": "mlm", kind "encoder") that `checkpoint.load`, `info`, `inspect` and `finetune classify`
(pooling "mean" or "first") read unchanged. What is given up is the transform's one non-linear layer between the
last block and the tied embedding; at these model sizes that is a small difference.

Here: the masking rule (`mask_tokens`), the loss on selected positions (`mlm_loss`), `MLMTask` (a
task of the shared loop) and `pretrain_mlm` (what `pretrain(objective="mlm")` runs). The mask token
and fill-mask, behind `scratchllm fill-mask`, are inference/fill_mask.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchllm.checkpoint.loader import read_config
from scratchllm.core.device import resolve_device
from scratchllm.data.loaders import RandomWindowLoader, eval_batches
from scratchllm.data.tokens import load_corpus
from scratchllm.errors import ScratchLLMError
from scratchllm.inference.fill_mask import MASK_TOKEN, USER_MASK, fill_mask, format_fillers, mask_token_id, with_mask_token
from scratchllm.models.gpt import GPT
from scratchllm.models.loss import IGNORE_INDEX
from scratchllm.models.size import TRAINING_BYTES_PER_PARAMETER, check_fits
from scratchllm.recipes.config import PretrainConfig
from scratchllm.tokenizer import Tokenizer
from scratchllm.training.loop import Task, fit

@dataclass
class MaskingConfig:
    """BERT's masking rule (Devlin et al. 2019, section 3.1 and appendix C.2)."""

    mask_prob: float = 0.15  # share of (non-special, non-padding) tokens selected for prediction
    replace_mask: float = 0.8  # of the selected: replaced by <|mask|>
    replace_random: float = 0.1  # ... by a random ordinary token; the rest (0.1) stay unchanged

    def __post_init__(self) -> None:
        for name in ("mask_prob", "replace_mask", "replace_random"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ScratchLLMError(f"masking field {name!r} must be a number in [0, 1], got {value!r}")
        if self.mask_prob == 0.0:
            raise ScratchLLMError("masking field 'mask_prob' must be > 0 (nothing would be predicted)")
        if self.replace_mask + self.replace_random > 1.0:
            raise ScratchLLMError(
                f"masking: replace_mask + replace_random = {self.replace_mask + self.replace_random} exceeds 1"
            )


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    special_ids: list[int] | tuple[int, ...],
    n_ordinary: int,
    attention_mask: torch.Tensor | None = None,
    masking: MaskingConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) -> (inputs (B, T), labels (B, T)) for masked-language modelling.

    Each position is selected independently with probability mask_prob (as Hugging Face's collator;
    BERT's original code picks round(0.15 * T) positions per sequence), never a special token nor a
    padding position (attention_mask 0). A selected position becomes <|mask|> (80%), a uniformly random
    ordinary token, ids 0..n_ordinary-1 (10%), or stays (10%); its label is the original id, every
    other label is -100. The unchanged and random cases keep the encoder from learning that only
    <|mask|> positions matter, since at fine-tuning time no token is masked.
    Random numbers come from `generator` (on its device) and are drawn for every position, so the
    masks depend only on the generator's state and the shape, not on the ids.
    """
    masking = masking or MaskingConfig()
    ids = ids.long()
    shape, device = ids.shape, ids.device
    rng_device = generator.device if generator is not None else device
    select_draw = torch.rand(shape, generator=generator, device=rng_device).to(device)
    kind_draw = torch.rand(shape, generator=generator, device=rng_device).to(device)
    random_ids = torch.randint(0, n_ordinary, shape, generator=generator, device=rng_device).to(device)
    candidates = ~torch.isin(ids, torch.tensor(list(special_ids), dtype=torch.long, device=device))
    if attention_mask is not None:
        candidates &= attention_mask.to(device=device, dtype=torch.bool)
    selected = candidates & (select_draw < masking.mask_prob)  # (B, T)
    to_mask = selected & (kind_draw < masking.replace_mask)
    to_random = selected & (kind_draw >= masking.replace_mask) & (kind_draw < masking.replace_mask + masking.replace_random)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def tokenizer_masking_ids(tokenizer: Tokenizer) -> tuple[int, list[int], int]:
    """(mask id, all special ids, number of ordinary ids) of a tokenizer with <|mask|>.
    Special tokens always take the last ids (see `Tokenizer`), so ordinary ids are 0..n_ordinary-1."""
    mask_id = mask_token_id(tokenizer)
    special = sorted(tokenizer.special_tokens.values())
    return mask_id, special, tokenizer.vocab_size - len(special)


def mlm_loss(model: GPT, inputs: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the original ids at the selected positions (labels != -100).

    Only the selected rows (about 15%) go through the (C -> V) head, so the largest matmul of the
    step is about seven times smaller than next-token prediction's over every position."""
    h = model.hidden_states(inputs, attention_mask=attention_mask)  # (B, T, C)
    selected = labels != IGNORE_INDEX  # (B, T)
    if not bool(selected.any()):
        return h.sum() * 0.0  # nothing selected in this batch (tiny batches only): a zero loss with grad
    return model.head_loss(h[selected], labels[selected])  # h[selected]: (N, C)


class MLMTask(Task):
    """Masked-language modelling on random windows of a token stream, as a `scratchllm.train.fit` task.

    Windows come from the same `RandomWindowLoader` as next-token pretraining (its shifted targets
    are unused); masks are drawn with the task's own generator, whose state is part of `state_dict`,
    so a resumed run sees the same masks. Validation masks use a generator reseeded at every
    evaluation, so successive validation losses compare the same predictions. Reported: val_loss,
    val_ppl and val_accuracy (top-1 accuracy at the selected positions).
    """

    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, data, batch_size: int, context_length: int, tokenizer: Tokenizer, seed: int = 1337,
                 device: str | torch.device = "cpu", eval_batches: int = 20, masking: MaskingConfig | None = None,
                 sample_prompt: str = ""):
        self.data, self.batch_size, self.context_length = data, batch_size, context_length
        self.tokenizer, self.seed, self.device = tokenizer, seed, torch.device(device)
        self.eval_batches, self.masking, self.sample_prompt = eval_batches, masking or MaskingConfig(), sample_prompt
        self.mask_id, self.special_ids, self.n_ordinary = tokenizer_masking_ids(tokenizer)
        if len(data.train) < context_length + 1:
            raise ScratchLLMError(
                f"training split has {len(data.train)} tokens, fewer than context_length + 1 = {context_length + 1}"
            )
        self.loader = RandomWindowLoader(data.train, batch_size, context_length, seed)  # CPU: masked there
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.save_extra = {"objective": "mlm", "mask_token": MASK_TOKEN}

    def _mask(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = mask_tokens(x, self.mask_id, self.special_ids, self.n_ordinary, masking=self.masking,
                                     generator=generator)
        return inputs.to(self.device), labels.to(self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.loader.next_batch()  # (B, T)
        return self._mask(x, self.generator)  # inputs, labels: (B, T) each

    def loss(self, model, batch) -> torch.Tensor:
        inputs, labels = batch
        return mlm_loss(model, inputs, labels)

    def batch_tokens(self, batch) -> int:
        return batch[0].numel()  # every position is read; about 15% of them are predicted

    def evaluate(self, model) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed + 2)
        loss_sum, correct, n = 0.0, 0, 0
        for x, _ in eval_batches(self.data.val, self.batch_size, self.context_length, self.eval_batches or None):
            inputs, labels = self._mask(x, generator)
            h = model.hidden_states(inputs)  # (B, T, C)
            selected = labels != IGNORE_INDEX
            logits = model.logits(h[selected]).float()  # (N, V): one batch's selected rows at a time
            target = labels[selected]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(-1) == target).sum())
            n += int(target.numel())
        if n == 0:
            return {}
        loss = loss_sum / n
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_accuracy": correct / n}

    def sample(self, model) -> str:
        """Top-5 fillers of the sample prompt when it holds a [MASK] (else nothing)."""
        if USER_MASK not in self.sample_prompt and MASK_TOKEN not in self.sample_prompt:
            return ""
        return format_fillers(fill_mask(model, self.tokenizer, self.sample_prompt, top_k=5))

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.generator.set_state(state["generator"])


def pretrain_mlm(run: PretrainConfig, tokenizer: Tokenizer, resume: bool = False,
                 masking: MaskingConfig | None = None) -> dict[str, Any]:
    """Pretrain a BERT-style encoder; what `pretrain` runs for objective "mlm" once it has resolved
    the run's settings. run.data: a text file or prepared DATADIR; run.model: a preset, config.json,
    dict or GPTConfig (vocab_size comes from the tokenizer, which gains <|mask|>; causal is set False)."""
    data, model, out, val_fraction, cfg = run.data, run.model, Path(run.out), run.val_fraction, run.train
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ScratchLLMError("pretrain --objective mlm: runs in a single process (not under torchrun)")
    tok = with_mask_token(tokenizer)
    model_cfg = dataclasses.replace(read_config(model, vocab_size=tok.vocab_size, context_length=cfg.context_length),
                                    causal=False)
    device = resolve_device(cfg.device)
    check_fits(model_cfg, device, TRAINING_BYTES_PER_PARAMETER, what="pretrain --objective mlm")
    corpus = load_corpus(data, tok, val_fraction=val_fraction)
    if Path(data).is_dir() and corpus.vocab_size > mask_token_id(tok):
        raise ScratchLLMError(f"{data}: prepared with {corpus.vocab_size} ids, which would overlap {MASK_TOKEN} "
                              f"(id {mask_token_id(tok)}); prepare it with the tokenizer that has {MASK_TOKEN}")
    torch.manual_seed(cfg.seed)
    net = GPT(model_cfg)
    masking = masking or MaskingConfig()
    task = MLMTask(corpus, cfg.batch_size, model_cfg.context_length, tok, seed=cfg.seed, device=device,
                   eval_batches=cfg.eval_batches, masking=masking, sample_prompt=cfg.sample_prompt)
    extra = {
        "objective": "mlm",
        "masking": asdict(masking),
        "data": {"path": str(Path(data).resolve()), "val_fraction": val_fraction, **dict(getattr(corpus, "meta", {}) or {}),
                 "bytes_per_token": getattr(corpus, "bytes_per_token", None)},
        "tokenizer": {"vocab_size": tok.vocab_size, "mask_token": MASK_TOKEN,
                      **tok.describe()},
    }
    return fit(net, task, cfg, out, resume=resume, tokenizer=tok, extra_config=extra)

