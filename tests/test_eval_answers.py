"""Answer extraction and comparison for GSM8K (last number) and MATH (last \\boxed{}, normalised)."""

from __future__ import annotations

import pytest

from eds.answers import (
    gsm8k_equal,
    gsm8k_extract,
    last_number,
    math_equal,
    math_extract,
    math_number,
    normalize_math,
    normalize_number,
)

# ------------------------------------------------------------------------------ GSM8K


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("She has 24 - 18 = 6 muffins left. The answer is 6.", "6"),
        ("Total: $1,234.50 spent", "1234.5"),
        ("3 boxes of 6 is 18, so 24 - 18 = 6.\n#### 6\nThat is 1 answer", "6"),  # after #### wins
        ("The answer is 18.00", "18"),
        ("It drops to -3 degrees.", "-3"),
        ("half: .5", "0.5"),
        ("1,2,3 are the first numbers", "3"),  # not a thousands separator
        ("200,000 people", "200000"),
        ("no numbers here", None),
        ("#### none, but 7 apples", "7"),
    ],
)
def test_gsm8k_extract(response: str, expected: str | None) -> None:
    assert gsm8k_extract(response) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "equal"),
    [("18", "18", True), ("18.0", "18", True), ("$18", "18", True), ("1,000", "1000", True), ("0.50", "0.5", True),
     ("17", "18", False), (None, "18", False), ("-3", "3", False)],
)
def test_gsm8k_equal(prediction: str | None, gold: str, equal: bool) -> None:
    assert gsm8k_equal(prediction, gold) is equal


def test_normalize_number_and_last_number() -> None:
    assert normalize_number("$1,000.50") == "1000.5"
    assert normalize_number("12.") == "12"
    assert normalize_number("-0.0") == "0"
    assert last_number("between 3 and 4.25 kg") == "4.25"


# ------------------------------------------------------------------------------ MATH


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("First \\boxed{3}, corrected: \\boxed{4}", "4"),
        ("The answer is 5.", None),  # MATH needs a box
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ],
)
def test_math_extract(response: str, expected: str | None) -> None:
    assert math_extract(response) == expected


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac1{2}", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("\\$18.00", "18.00"),
        ("10\\%", "10"),
        ("5 \\text{ cm}", "5"),
        ("12 inches", "12"),
        ("x = 5", "5"),
        ("\\text{(A)}", "(A)"),
        ("\\mbox{Monday}", "Monday"),
        ("3.", "3"),
        (".5", "0.5"),
        ("1,000", "1000"),
        ("1,2", "1,2"),  # a tuple, not a thousands separator
        ("\\sqrt3", "\\sqrt{3}"),
        ("2\\!\\cdot\\! 3", "2\\cdot3"),
        ("3/4", "\\frac{3}{4}"),
    ],
)
def test_normalize_math(answer: str, normalised: str) -> None:
    assert normalize_math(answer) == normalised


@pytest.mark.parametrize(
    ("prediction", "gold", "equal"),
    [
        ("0.5", "\\frac{1}{2}", True),  # numeric comparison when both parse
        ("\\dfrac{1}{2}", "\\frac12", True),
        ("-\\frac{3}{4}", "-0.75", True),
        ("1/2", "\\frac{1}{2}", True),
        ("x=7", "7", True),
        ("18.0", "18", True),
        ("\\left(3, \\frac{\\pi}{2}\\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("30^\\circ", "30", True),
        ("\\$5", "5", True),
        ("0.33", "\\frac{1}{3}", False),
        ("1,2", "12", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        (None, "5", False),
        ("\\sqrt{2}", "1.414", False),
    ],
)
def test_math_equal(prediction: str | None, gold: str, equal: bool) -> None:
    assert math_equal(prediction, gold) is equal


def test_math_number() -> None:
    from fractions import Fraction

    assert math_number("\\frac{3}{4}") == Fraction(3, 4)
    assert math_number("-\\frac{1}{2}") == Fraction(-1, 2)
    assert math_number("\\frac{1}{0}") is None
    assert math_number("\\pi") is None
