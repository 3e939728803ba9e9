"""The one classification report (evaluation/metrics.py), computed by hand."""

from __future__ import annotations

import pytest

from scratchllm.evaluation.metrics import classification_report


def test_classification_metrics_by_hand():
    m = classification_report(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"], ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == 3 / 5
    assert m["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
