"""Final-answer extraction and comparison for math benchmarks.

* Gold answers: GSM8K's ``#### n`` (:func:`gsm8k_final_answer`), MATH's ``\\boxed{...}``
  (:func:`last_boxed`).
* Model responses: GSM8K takes the number after the last ``####`` if the response has one, else
  the last number in the response (lm-evaluation-harness's "flexible-extract"), normalised
  (:func:`gsm8k_extract`); MATH takes the last ``\\boxed{}`` (:func:`math_extract`).
* Comparison: :func:`gsm8k_equal` compares numbers exactly (as fractions); :func:`math_equal`
  compares :func:`normalize_math` strings (the Hendrycks et al. ``strip_string`` rules plus a few
  more) and, when both sides parse as numbers (``0.5``, ``\\frac{1}{2}``, ``1/2``, ``-\\frac12``),
  compares the values.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# A number in free text: thousands separators only in groups of three ("1,2,3" is three numbers).
_TEXT_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+")


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


# ------------------------------------------------------------------------------ numbers


def normalize_number(text: str) -> str:
    """``"$1,000.50"`` -> ``"1000.5"``; ``"12."`` -> ``"12"``; ``"3.00"`` -> ``"3"``; ``"-0"`` -> ``"0"``."""
    s = text.strip().replace("$", "").replace(",", "").rstrip(".")
    if s.startswith("-."):
        s = "-0" + s[1:]
    elif s.startswith("."):
        s = "0" + s
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") and text.strip() else s


def last_number(text: str) -> str | None:
    """The last number in free text, normalised (:func:`normalize_number`); None if there is none."""
    found = _TEXT_NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def gsm8k_extract(response: str) -> str | None:
    """A GSM8K prediction: the number after the last ``####`` if any, else the last number."""
    if "####" in response:
        after = last_number(response.rsplit("####", 1)[1].split("\n")[0])
        if after is not None:
            return after
    return last_number(response)


def _fraction(text: str) -> Fraction | None:
    """A plain number (int, decimal, ``a/b``) as an exact fraction, or None."""
    s = text.strip()
    try:
        if re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", s):
            return Fraction(s)
        match = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
        if match and int(match.group(2)) != 0:
            return Fraction(int(match.group(1)), int(match.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def gsm8k_equal(prediction: str | None, gold: str) -> bool:
    """Numeric equality of a GSM8K prediction and the gold answer (both normalised)."""
    if prediction is None:
        return False
    a, b = _fraction(normalize_number(prediction)), _fraction(normalize_number(gold))
    if a is not None and b is not None:
        return a == b
    return normalize_number(prediction) == normalize_number(gold)


# ------------------------------------------------------------------------------ MATH


def math_extract(response: str) -> str | None:
    """A MATH prediction: the content of the response's last ``\\boxed{}`` (None without one)."""
    return last_boxed(response)


_UNWRAP = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\{([^{}]*)\}")
_TRAILING_UNITS = re.compile(r"^(-?[\d.,/]+)\s+[A-Za-z][A-Za-z ]*$")


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``, ``\\frac{1}2`` -> ``\\frac{1}{2}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part or part[0] == "{":
            if part.startswith("{"):
                close = _matching_brace(part, 0)
                if close is not None and close + 1 < len(part) and part[close + 1] != "{":
                    part = part[: close + 1] + "{" + part[close + 1] + "}" + part[close + 2 :]
            out += part
            continue
        if len(part) < 2:
            out += part
            continue
        a, b = part[0], part[1]
        if b == "{":
            out += "{" + a + "}" + part[1:]
        else:
            out += "{" + a + "}{" + b + "}" + part[2:]
    return out


def _matching_brace(s: str, start: int) -> int | None:
    depth = 0
    for pos in range(start, len(s)):
        if s[pos] == "{":
            depth += 1
        elif s[pos] == "}":
            depth -= 1
            if depth == 0:
                return pos
    return None


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize_math(answer: str) -> str:
    """A canonical string for a MATH answer.

    Drops spacing commands (``\\!``, ``\\,``), ``\\left``/``\\right``, degree marks
    (``^\\circ``), dollar signs and ``\\$``, percent signs, trailing units (``\\text{ cm}``,
    ``5 inches``), ``\\text{}``-style wrappers, a leading ``x =``, every space and a trailing
    period; ``\\dfrac``/``\\tfrac`` become ``\\frac``, ``\\frac12`` becomes ``\\frac{1}{2}``,
    ``\\sqrt3`` becomes ``\\sqrt{3}``, a simple ``a/b`` becomes ``\\frac{a}{b}``, a leading
    ``.5`` becomes ``0.5`` and thousands separators go (``1,000``, but not a tuple ``1,2``).
    """
    s = answer.strip().replace("\n", " ")
    for token in ("\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        s = s.replace(token, "")
    s = s.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    if "\\text{ " in s:  # Hendrycks: "5 \\text{ cm}" -> units
        s = s.split("\\text{ ")[0]
    s = re.sub(r"\\(?:mbox|text)\{\s*(?:cm|m|km|mm|inches|inch|feet|foot|ft|units|square units|degrees|degree|dollars|cents|hours|minutes|seconds|days|meters|miles|pounds)\s*\}\s*$", "", s)
    while _UNWRAP.search(s):
        s = _UNWRAP.sub(r"\1", s)
    s = s.strip()
    units = _TRAILING_UNITS.match(s)
    if units:
        s = units.group(1)
    s = re.sub(r"\s+", "", s)
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.")
    s = _fix_sqrt(_fix_fracs(s))
    simple = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if simple:
        s = f"\\frac{{{simple.group(1)}}}{{{simple.group(2)}}}"
    return s


def math_number(normalized: str) -> Fraction | None:
    """The value of a normalised MATH answer that is a plain number or ``\\frac{a}{b}`` (else None)."""
    plain = _fraction(normalized)
    if plain is not None:
        return plain
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", normalized)
    if match:
        num, den = Fraction(match.group(2)), Fraction(match.group(3))
        if den != 0:
            value = num / den
            return -value if match.group(1) else value
    return None


def math_equal(prediction: str | None, gold: str) -> bool:
    """Whether a MATH prediction matches the gold answer (normalised strings, else numeric values)."""
    if prediction is None:
        return False
    a, b = normalize_math(prediction), normalize_math(gold)
    if a == b:
        return True
    x, y = math_number(a), math_number(b)
    return x is not None and y is not None and x == y


__all__ = [
    "gsm8k_equal",
    "gsm8k_extract",
    "gsm8k_final_answer",
    "last_boxed",
    "last_number",
    "math_equal",
    "math_extract",
    "math_number",
    "normalize_math",
    "normalize_number",
]
