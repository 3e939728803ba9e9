"""Duplicate texts in labelled data (scratchllm.data.labelled): the normalisation, which copy stays,
conflicting labels, held-out files, and the counts on the real UCI SMS Spam Collection."""

from __future__ import annotations

import pytest

from scratchllm.data.labelled import Duplicates, Examples, dedupe, load_labelled, load_sms_spam, normalise_text, overlap


@pytest.mark.parametrize("text, normalised", [
    ("Sorry, I'll call later", "sorry i ll call later"),
    ("  sorry I'LL   call later...\n", "sorry i ll call later"),
    ("WIN £1000 cash! Call 09061701461", "win 1000 cash call 09061701461"),  # digits stay
    ("Café déjà-vu", "café déjà vu"),  # letters beyond ASCII are letters
    ("Straße", "strasse"),  # case-folded, not just lower-cased
    (":)  ", ":)"),  # no letter or digit: the text itself, whitespace collapsed
    (":-) :-)", ":-) :-)"),
])
def test_normalise_text(text, normalised):
    assert normalise_text(text) == normalised


def test_dedupe_keeps_the_first_copy_and_drops_conflicting_labels():
    data = Examples(
        ["Ok lor", "ok lor.", "Free entry! txt WIN", "see you", "free ENTRY: txt win", "OK LOR", "see you", ":)", ":-)"],
        ["ham", "ham", "spam", "ham", "ham", "ham", "spam", "ham", "ham"],
        "d.tsv",
    )
    kept, stats = dedupe(data)
    # "free entry txt win" and "see you" carry both labels: every copy of both goes
    assert kept.texts == ["Ok lor", ":)", ":-)"] and kept.labels == ["ham"] * 3 and kept.source == "d.tsv"
    assert stats == Duplicates(repeated=2, conflicting=4, conflicting_texts=2, held_out=0)
    assert stats.removed == len(data) - len(kept) == 6


def test_dedupe_drops_training_texts_that_are_in_a_held_out_set():
    data = Examples(["a b", "A, B!", "c", "d", "c"], ["x", "x", "y", "x", "y"])
    held_out = [Examples(["a  b"], ["x"]), Examples(["D"], ["y"])]  # a held-out label does not matter
    kept, stats = dedupe(data, held_out)
    assert kept.texts == ["c"] and stats == Duplicates(repeated=1, held_out=3)
    assert overlap(data, held_out[0]) == 1 and overlap(kept, held_out[0]) == 0


@pytest.fixture(scope="module")
def sms(shared_data):
    return load_sms_spam(shared_data / "sms_spam_collection.tsv")


def test_the_sms_collection_has_5131_distinct_texts(sms):
    kept, stats = dedupe(sms)
    assert (len(sms), len(kept)) == (5574, 5131)
    assert kept.counts() == {"ham": 4502, "spam": 629}  # of 4,827 ham and 747 spam
    assert stats == Duplicates(repeated=443)  # no text carries both labels
    assert len({normalise_text(t) for t in kept.texts}) == len(kept)
    assert len(set(sms.texts)) == 5171  # verbatim: 403 exact repeats; normalising finds 40 more


def test_read_labelled_header_and_jsonl(tmp_path):
    tsv = tmp_path / "h.tsv"
    tsv.write_text("id\tbody\tclass\n1\thello\tham\n2\tbuy now\tspam\n", encoding="utf-8")
    got = load_labelled(tsv, "body", "class")
    assert (got.texts, got.labels) == (["hello", "buy now"], ["ham", "spam"])
    got = load_labelled(tsv, "1", "2")  # positional: no header, so the header row is data
    assert (got.texts[1:], got.labels[1:]) == (["hello", "buy now"], ["ham", "spam"])
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "hi", "label": "ham"}\n\n{"text": "win", "label": "spam"}\n', encoding="utf-8")
    got = load_labelled(jsonl)
    assert (got.texts, got.labels) == (["hi", "win"], ["ham", "spam"])
