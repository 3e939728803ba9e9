"""No verb's flag changes its name, default or meaning when the CLI is regenerated from the option groups.

The reference table was taken from the hand-written parser before the refactor (tests/cli/flags.py).
New verbs and new flags may appear; nothing that was there may go or change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.flags import flag_table

BEFORE = json.loads((Path(__file__).parent / "flags_before_options_refactor.json").read_text())
NOW = flag_table()


def _same_default(before, now) -> bool:
    # A default that used to be shown only in the help text ("(default: 0.0006)") may now be a real
    # argparse default, and the other way round: compare what the user is told.
    if isinstance(before, dict) and isinstance(now, dict):
        return before == now
    if isinstance(before, dict):
        return before["from_help"] == repr(tuple(now) if isinstance(now, list) else now)
    if isinstance(now, dict):
        return now["from_help"] == repr(tuple(before) if isinstance(before, list) else before)
    return before == now


@pytest.mark.parametrize("verb", sorted(BEFORE))
def test_every_flag_of_the_verb_keeps_its_name_default_and_meaning(verb):
    assert verb in NOW, f"verb {verb!r} disappeared"
    missing = sorted(set(BEFORE[verb]) - set(NOW[verb]))
    assert not missing, f"{verb}: flags disappeared: {missing}"
    for flag, was in BEFORE[verb].items():
        now = NOW[verb][flag]
        assert _same_default(was["default"], now["default"]), f"{verb} {flag}: default {was['default']!r} -> {now['default']!r}"
        for key in ("nargs", "choices", "required", "type", "const"):
            assert was[key] == now[key], f"{verb} {flag}: {key} {was[key]!r} -> {now[key]!r}"


def test_the_comparison_catches_a_changed_default():
    # The check above must be able to fail: a table with one default changed differs.
    verb, flag = "generate", "--temperature"
    assert _same_default(BEFORE[verb][flag]["default"], NOW[verb][flag]["default"])
    assert not _same_default(BEFORE[verb][flag]["default"], 0.7)
    assert not _same_default({"from_help": "0.0006"}, 0.0003)
    assert _same_default({"from_help": "0.0006"}, 0.0006)
