"""What counts as the same text (scratchllm.data.duplicates): the normalised form, the similarity of two
texts, near-copy pairs against comparing every pair, groups of copies and copies of known texts."""

from __future__ import annotations

import itertools
import random

import pytest

from scratchllm.data.duplicates import copies_of, copy_groups, near_copy_pairs, normalise_text, similarity
from scratchllm.errors import ScratchLLMError


@pytest.mark.parametrize("text, normalised", [
    ("Sorry, I'll call later", "sorry i ll call later"),
    ("  sorry I'LL   call later...\n", "sorry i ll call later"),
    ("Café déjà-vu", "café déjà vu"),  # letters beyond ASCII are letters
    ("Straße", "strasse"),  # case-folded, not just lower-cased
    # every word holding a digit is the variable part of a template: one "0", a run of them one "0"
    ("WIN £1000 cash! Call 09061701461", "win 0 cash call 0"),
    ("You have 1 new message. Call 0207-083-6089", "you have 0 new message call 0"),
    ("Claim code K52. Valid 12hrs only", "claim code 0 valid 0 only"),
    ("PRIVATE! Your 2003 Account Statement for 07808247860 shows 800 un-redeemed S. I. M. points",
     "private your 0 account statement for 0 shows 0 un redeemed s i m points"),
    # web and e-mail addresses, whole, glued text included
    ("log onto http://www.urawinner.com THERE'S A FANTASTIC PRIZE", "log onto 0 there s a fantastic prize"),
    ("TsCs www.Ldew.com1win150ppmx3age16 SkillGame", "tscs 0 skillgame"),
    ("mail Dorothy@kiefer.com (Bank of Granite)", "mail 0 bank of granite"),
    # nothing left but numbers: the digits stay, so that different numbers are different texts
    ("645", "645"),
    ("2/2 146tf150p", "2 2 146tf150p"),
    (":)  ", ":)"),  # no letter or digit: the text itself, whitespace collapsed
    (":-) :-)", ":-) :-)"),
])
def test_normalise_text(text, normalised):
    assert normalise_text(text) == normalised


@pytest.mark.parametrize("a, b, expected", [
    ("Sorry, I'll call later", "sorry i'll call later!!", 1.0),
    ("You have 1 new voicemail. Please call 08719181503", "You have 1 new message. Please call 08718738034.", 14 / 16),
    ("So when do you wanna gym?", "So when do you wanna gym harri", 12 / 13),  # a word added: 6 of 6 and 7
    ("I am on the way to ur home", "I am on the way to tirupur", 12 / 15),  # 6 of 8 and 7: not near-copies
    ("ok lor", "see you", 0.0),
])
def test_similarity(a, b, expected):
    assert similarity(a, b) == pytest.approx(expected, abs=1e-12)
    assert similarity(b, a) == similarity(a, b)


@pytest.mark.parametrize("threshold", [1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.5])
def test_near_copy_pairs_finds_every_pair_that_comparing_all_finds(threshold):
    # Word sequences from a 5-word vocabulary, and copies with words dropped or one added: many pairs
    # near the threshold, short and long, so that a filter that loses a pair shows.
    rng = random.Random(int(threshold * 100))
    found = 0
    for _ in range(8):
        base = [" ".join(rng.choice("abcde") for _ in range(rng.randint(1, 16))) for _ in range(12)]
        variants = [" ".join(w for w in k.split() if rng.random() > 0.12) or "a" for k in base]
        keys = list(dict.fromkeys(base + variants + [k + " " + rng.choice("xyz") for k in base]))
        every = [(i, j) for i, j in itertools.combinations(range(len(keys)), 2) if similarity(keys[i], keys[j]) >= threshold]
        assert near_copy_pairs(keys, threshold) == every
        found += len(every)
    assert found == 0 if threshold == 1.0 else found > 20  # different texts are never equal


def test_near_copy_pairs_checks_the_threshold():
    with pytest.raises(ScratchLLMError, match=r"^near-copy similarity 1\.5: expected a number in \(0, 1\]$"):
        near_copy_pairs(["a b"], 1.5)


def test_copy_groups_join_copies_and_chains_of_near_copies():
    texts = ["You have 1 new message. Please call 08718738034.",   # 0
             "Sorry, I'll call later",                            # 1
             "you have 2 new message please call 0800 123 456",   # 2: the same normalised text as 0
             "You have 1 new message. Please call now 08718738034",  # 3: a word more than 0 (0.94)
             "You have 1 new message, please call now, ok 0871",  # 4: a word more than 3, 0.88 from 0
             "sorry i'll call later..."]                          # 5
    assert similarity(texts[0], texts[4]) < 0.9 <= min(similarity(texts[0], texts[3]), similarity(texts[3], texts[4]))
    assert copy_groups(texts) == [0, 1, 0, 0, 0, 1]
    assert copy_groups(texts, threshold=None) == [0, 1, 0, 3, 4, 1]  # equal normalised texts only


def test_copies_of_known_texts():
    known = ["Urgent! Call 09061743811 from landline. Your ABTA complimentary 4* Tenerife Holiday or £5000 cash await collection"]
    texts = ["URGENT call 09066612661 from landline: your ABTA complimentary 4* Tenerife Holiday or £10,000 cash await collection",
             "Urgent! Please call 0906346330 from landline. Your ABTA complimentary 4* Tenerife Holiday or £5000 cash await collection",
             "Urgent! Call me when you are home"]
    assert copies_of(texts, known) == [True, True, False]  # the same text, a near-copy (0.97), another text
    assert copies_of(texts, known, threshold=None) == [True, False, False]
    assert copies_of(texts, []) == [False, False, False]
