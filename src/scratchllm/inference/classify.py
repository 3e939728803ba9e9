"""Classify texts with a fine-tuned classifier (`scratchllm classify`): a label and its probability each."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratchllm.checkpoint.loader import load
from scratchllm.core.device import resolve_device
from scratchllm.core.files import check_overwrite, read_text, write_atomic
from scratchllm.errors import ScratchLLMError


def classify_texts(model: str | os.PathLike[str], texts: Sequence[str] | None = None,
                   input: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None,
                   device: str = "cpu", batch_size: int = 32, overwrite: bool = False) -> list[dict[str, Any]]:
    """Classify `texts`, or the lines of `input` (one text per line; blank lines skipped), with the
    classifier in `model`. Returns one {"text", "label", "probability"} per text; with `out`, also
    writes them as JSONL there (an existing file only with overwrite)."""
    if out is not None:
        check_overwrite(out, overwrite, "predictions file")
    if (texts is None) == (input is None):
        raise ScratchLLMError("classify: give the text(s) or an input file, not both or neither")
    if input is not None:
        texts = [line for line in read_text(input, expected="a text file, one text per line").splitlines() if line.strip()]
        if not texts:
            raise ScratchLLMError(f"{input}: no texts (expected one text per line)")
    classifier, _ = load(model, device=resolve_device(device), kind="classifier")
    rows = [{"text": t, "label": p.label, "probability": round(p.probability, 6)}
            for t, p in zip(texts, classifier.predict(list(texts), batch_size))]
    if out is not None:
        write_atomic(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows

