"""Duplicate texts in labelled data (scratchllm.data.labelled): which copy stays, near-copies,
conflicting labels, held-out files, and the counts on the real UCI SMS Spam Collection (what counts as
the same text is tests/data/test_duplicates.py's)."""

from __future__ import annotations

import re

import pytest

from scratchllm.data.duplicates import copy_groups, normalise_text
from scratchllm.data.labelled import (Duplicates, Examples, dedupe, load_labelled, load_sms_spam, overlap,
                                      split_examples)


def test_dedupe_keeps_the_first_copy_and_drops_conflicting_labels():
    data = Examples(
        ["Ok lor", "ok lor.", "Free entry! txt WIN", "see you", "free ENTRY: txt win", "OK LOR", "see you", ":)", ":-)",
         "You have 1 new message. Please call 08718738034.", "You have 1 new message. Please call now 0871 2400200",
         "you have 2 new message please call 09061701461"],
        ["ham", "ham", "spam", "ham", "ham", "ham", "spam", "ham", "ham", "spam", "spam", "spam"],
        "d.tsv",
    )
    kept, stats = dedupe(data)
    # "free entry txt win" and "see you" carry both labels: every copy of both goes; of the three
    # messages, the second is a near-copy of the first (a word more) and the third a copy (other numbers)
    assert kept.texts == ["Ok lor", ":)", ":-)", "You have 1 new message. Please call 08718738034."]
    assert kept.labels == ["ham", "ham", "ham", "spam"] and kept.source == "d.tsv"
    assert stats == Duplicates(repeated=3, conflicting=4, conflicting_texts=2, held_out=0, near=1)
    assert stats.removed == len(data) - len(kept) == 8
    kept, stats = dedupe(data, threshold=None)  # equal normalised texts only
    assert kept.texts[-2:] == ["You have 1 new message. Please call 08718738034.",
                               "You have 1 new message. Please call now 0871 2400200"]
    assert stats == Duplicates(repeated=3, conflicting=4, conflicting_texts=2)


def test_dedupe_drops_training_texts_that_are_in_a_held_out_set():
    data = Examples(["a b", "A, B!", "c", "d", "c", "we tried to contact you re your reply to our offer call 0800",
                     "we tried to contact you re our offer of a video phone call 0800"], ["x", "x", "y", "x", "y", "y", "y"])
    held_out = [Examples(["a  b"], ["x"]), Examples(["D", "We tried to contact you re your reply to our offer. Call 08000930705"],
                                                    ["y", "x"])]  # a held-out label does not matter
    kept, stats = dedupe(data, held_out)
    assert kept.texts == ["c", "we tried to contact you re our offer of a video phone call 0800"]  # 0.64 alike: kept
    assert stats == Duplicates(repeated=1, held_out=4)
    assert overlap(data, held_out[0]) == 1 and overlap(kept, held_out[0]) == 0
    assert overlap(data, held_out[1]) == 2 and overlap(kept, held_out[1]) == 0


@pytest.fixture(scope="module")
def sms(shared_data):
    return load_sms_spam(shared_data / "sms_spam_collection.tsv")


def test_the_sms_collection_has_4972_groups_of_copies(sms):
    kept, stats = dedupe(sms)
    assert (len(sms), len(kept)) == (5574, 4972)
    assert kept.counts() == {"ham": 4484, "spam": 488}  # of 4,827 ham and 747 spam
    assert stats == Duplicates(repeated=488, near=114)  # no group carries both labels
    assert len(set(copy_groups(kept.texts))) == len(kept)
    assert len({normalise_text(t) for t in sms.texts}) == 5086
    assert len(set(sms.texts)) == 5171  # verbatim: 403 exact repeats; the normalised form finds 85 more
    # the twelve "PRIVATE! Your 2003 Account Statement for 07808247860 shows 800 un-redeemed S. I. M.
    # points ...", with other numbers, without one, or with "<fone no>" in its place, are one
    private = [t for t in sms.texts if t.startswith("PRIVATE! Your 2003 Account Statement for") and "points" in t]
    assert len(private) == 12 and sum(t in private for t in kept.texts) == 1


@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (0.6, 0.2, 0.2)])
def test_no_sms_test_text_is_a_training_text_with_its_digits_masked(sms, fractions):
    # Issue 27's check, independent of the normalised form: with every run of digits masked, 6 of 252
    # test and 13 of 252 validation texts (60/20/20) equalled a training text under the earlier rule.
    def masked(text):
        return re.sub(r"\d+", "0", " ".join("".join(ch if ch.isalnum() else " " for ch in text.casefold()).split()))

    cut = split_examples(sms, fractions, 123, balance=True)
    seen = {masked(t) for t in cut.train.texts}
    assert [sum(masked(t) in seen for t in part.texts) for part in (cut.val, cut.test)] == [0, 0]
    assert len(cut.test) == 196 and overlap(cut.train, cut.test) == overlap(cut.train, cut.val) == 0


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
