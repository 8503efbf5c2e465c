"""Final-answer extraction: MATH's \\boxed{...} and GSM8K's '#### n'."""

from __future__ import annotations

import pytest

from eds.answers import gsm8k_final_answer, last_boxed

# ------------------------------------------------------------------------------ last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is $\\boxed{42}$.", "42"),
        ("so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{{a}{b}}", "{a}{b}"),
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}", "3"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} and later \\fbox{9}", "9"),
        ("\\fbox{9} and later \\boxed{1}", "1"),
        ("\\boxed {5}", "5"),
        ("The answer is $\\boxed 5$.", "5"),
        ("$\\boxed 5$ and then a set {x, y}", "5"),
        ("\\boxed{}", ""),
    ],
)
def test_last_boxed(text: str, expected: str) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no box here, just {braces}",
        "\\boxed{\\frac{1}{2}",  # unbalanced: never closes
        "\\boxed{1} and then \\boxed{2",  # the last box is unbalanced
        "\\boxed",
        "\\boxed $",
    ],
)
def test_last_boxed_none(text: str) -> None:
    assert last_boxed(text) is None


# ------------------------------------------------------------------------------ gsm8k


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("Janet sells 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### 1,234,567", "1234567"),
        ("It falls by 3.\n#### -3", "-3"),
        ("#### 3.75", "3.75"),
        ("#### $1,000.50", "1000.50"),
        ("#### 12.", "12"),
        ("step 1: 5 + 5 = 10\n#### 10 apples", "10"),
        ("a #### 7 and another #### 8", "8"),
    ],
)
def test_gsm8k_final_answer(solution: str, expected: str) -> None:
    assert gsm8k_final_answer(solution) == expected


def test_gsm8k_without_a_number_returns_the_stripped_tail() -> None:
    assert gsm8k_final_answer("work\n#### none ") == "none"


def test_gsm8k_ignores_numbers_before_the_marker() -> None:
    assert gsm8k_final_answer("48 / 2 = 24 clips; 48 + 24 = 72\n#### 72") == "72"
    assert gsm8k_final_answer("100 apples\n#### 5") == "5"
