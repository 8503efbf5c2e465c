"""Final-answer extraction for math benchmarks: GSM8K's ``#### n`` and MATH's ``\\boxed{...}``."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        tail = text[start + len("\\boxed") :].strip()
        return tail.split("$")[0].strip() or None
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
