"""The instruction sanitizer: the official rules, and the three official bugs fixed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from magpie_exp.sanitize import remove_prefix, sanitize_instruction


@pytest.mark.parametrize("raw,clean", [
    ("1. What is 2+2?", "What is 2+2?"),
    ("a) Name a prime.", "Name a prime."),
    ("Question: Why is the sky blue?", "Why is the sky blue?"),
    ("**Task** Summarise this.", "Summarise this."),
    ("**Task:** Summarise this.", "Summarise this."),
    ("## Problem: Solve x+1=2.", "Solve x+1=2."),
    ("Question 3: Is it hot?", "Is it hot?"),
    ("Q1. Is it cold?", "Is it cold?"),
    ("Part 2: Explain.", "Explain."),
    ("The senario: a storm.", "a storm."),
])
def test_prefixes_are_removed(raw: str, clean: str) -> None:
    assert remove_prefix(raw) == clean


def test_colon_markers_cut_the_leaked_answer() -> None:
    # Official bug: the regex required "Answer::"; "Answer:" never matched.
    text, rule = sanitize_instruction("Compute 17*3 for me please. Answer: 51", "llama3")
    assert (text, rule) == ("Compute 17*3 for me please.", "4")
    text, rule = sanitize_instruction("Explain recursion simply Explanation: it calls itself", "gemma2")
    assert (text, rule) == ("Explain recursion simply", "4")


def test_bold_branch_keeps_its_result() -> None:
    # Official bug: the <b> branch computed a result and discarded it.
    text, rule = sanitize_instruction("<b>Write a haiku about rain</b>", "llama3")
    assert (text, rule) == ("Write a haiku about rain", "3")


def test_marker_at_the_start_does_not_empty_the_instruction() -> None:
    text, _ = sanitize_instruction("Here are some numbers: 3, 5, 8. What comes next?", "llama3")
    assert text == "Here are some numbers: 3, 5, 8. What comes next?"


def test_step_marker_cut_is_llama_only() -> None:
    raw = "Solve 2x = 10 for x. ## Step 1 divide"
    assert sanitize_instruction(raw, "llama3") == ("Solve 2x = 10 for x.", "5")
    assert sanitize_instruction(raw, "gemma2")[1] == "6.2"


def test_star_question_and_quote_rules() -> None:
    assert sanitize_instruction("*What is love?* Baby don't hurt me", "llama3") == ("What is love?", "1")
    assert sanitize_instruction('"Who wrote Hamlet?" he asked', "gemma2") == ('"Who wrote Hamlet?', "2.1")
    assert sanitize_instruction('"Rewrite this line\nplease', "gemma2") == ('"Rewrite this line', "2.2")


def test_colon_first_line_rules() -> None:
    assert sanitize_instruction("Consider the following:\nIs 7 prime?\nIt is.", "llama3") == ("Consider the following:\nIs 7 prime?", "6.2")
    assert sanitize_instruction("Fix this code:\nprint(x", "gemma2") == ("Fix this code:", "5.3")


def test_default_keeps_up_to_the_question_or_first_line() -> None:
    assert sanitize_instruction("How do magnets work? I wonder.", "llama3") == ("How do magnets work?", "99.1")
    assert sanitize_instruction("Tell me a joke\nabout cats", "gemma2") == ("Tell me a joke", "6.2")


def test_unknown_family_names_the_key() -> None:
    with pytest.raises(ValueError, match="generator.sanitize must be one of"):
        sanitize_instruction("x", "mistral")


@given(st.text(max_size=300), st.sampled_from(["llama3", "gemma2"]))
def test_sanitizer_never_crashes_and_never_grows_the_text(raw: str, family: str) -> None:
    text, rule = sanitize_instruction(raw, family)
    assert isinstance(rule, str) and rule
    assert len(text) <= len(raw)
