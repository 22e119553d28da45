"""Numbers inside result sentences: how they are written, and how a re-check compares two sentences.

A result's sentences ("it is only 897.5 x the layer's median |h|") print measured values, and a value that sits
near a rounding boundary prints one digit apart on another CPU or thread count (897.548 -> 897.5 or 897.6).
So the re-check (lib/check.py) compares sentences by their words and their numbers, not character by character.

The convention that makes this well defined: a measured value is always written with a decimal point or an
exponent (`sig`), and a plain integer always names or counts something (a layer, token, channel, column, head, a
number of windows). Integers are compared exactly; measured values within the tolerance.
"""
import math
import numbers
import re

# a number that does not continue a word or another number: "gpt-2" and "Gemma3" hold none, "layers 1-9" two
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?%?")


def sig(x, digits: int = 4) -> str:
    """A measured value for a sentence: `digits` significant digits (format `g`), never written as a bare integer
    (1619.37 at 4 digits is '1619.4', 3.0 is '3.0'), so it cannot be read as an index. Python ints pass as they are."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return str(x)
    text = f"{x:.{digits}g}"
    if text.lstrip("-").isdigit():  # `g` dropped the point: 1000 <= |x| < 10**digits, or an integral value
        text = f"{x:.1f}"
    return text


def is_measured(token: str) -> bool:
    """A number token written as a measured value (a decimal point, an exponent or a percent sign)."""
    return any(c in token for c in ".eE%")


def _value_and_half_unit(token: str) -> tuple[float, float]:
    """The token's value and half a unit of its last printed digit (the rounding it may carry)."""
    body = token.rstrip("%").replace(",", "")
    mantissa, _, exponent = body.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    scale = 10.0 ** int(exponent) if exponent else 1.0
    return float(body), 0.5 * 10.0 ** -decimals * scale


def numbers_match(old: str, new: str, rtol: float, atol: float) -> bool:
    """Two number tokens agree: integers exactly; measured values when their difference is within the relative
    tolerance or within the rounding of their printed digits, whichever is larger."""
    if is_measured(old) != is_measured(new) or old.endswith("%") != new.endswith("%"):
        return False
    if not is_measured(old):
        return old == new
    a, half_a = _value_and_half_unit(old)
    b, half_b = _value_and_half_unit(new)
    allowed = max(rtol * max(abs(a), abs(b)), half_a + half_b, atol)
    return abs(a - b) <= allowed * (1 + 1e-9)  # 0.62 - 0.61 is a hair over 0.01 in binary


def texts_match(old: str, new: str, rtol: float, atol: float) -> bool:
    """Two sentences agree: the same words in the same places, and each number agreeing with its counterpart."""
    if old == new:
        return True
    old_numbers, new_numbers = NUMBER.findall(old), NUMBER.findall(new)
    if NUMBER.split(old) != NUMBER.split(new) or len(old_numbers) != len(new_numbers):
        return False
    return all(numbers_match(a, b, rtol, atol) for a, b in zip(old_numbers, new_numbers))


def close(a: float, b: float, rtol: float, atol: float) -> bool:
    """Two JSON floats agree (NaN agrees with NaN)."""
    if math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
