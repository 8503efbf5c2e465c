"""Final-answer extraction for math benchmarks: GSM8K's ``#### n`` and MATH's ``\\boxed{...}``."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if max(boxed, fbox) < 0:
        return None
    end = boxed + len("\\boxed") if boxed > fbox else fbox + len("\\fbox")
    rest = text[end:].lstrip()
    if not rest.startswith("{"):  # "\\boxed 5$": the argument is the next token
        return rest.split("$")[0].strip() or None
    brace = len(text) - len(rest)
    depth = 0
    for pos in range(brace, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : pos]
    return None


def gsm8k_final_answer(solution: str) -> str:
    """The number after GSM8K's ``####`` marker, without thousands separators."""
    tail = solution.split("####")[-1]
    match = _NUMBER.search(tail)
    return match.group(0).replace(",", "") if match else tail.strip()
