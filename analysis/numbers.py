"""Numbers written for reading, the one formatter of the report and of `lmscale fit`'s text output.

Three significant figures throughout; sizes (parameters, tokens) with SI-style suffixes (830K, 3.31M);
compute as a×10ⁿ FLOPs; relative errors as percentages; an interval edge that sits on a bound of its
law written open, with the side it extends to: (< 2.6×10⁻⁸, 1.51].
"""

from __future__ import annotations

import math

DIGITS = 3
MISSING = "—"
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
PLAIN_RANGE = (1e-3, 1e5)  # |x| outside this is written a×10ⁿ


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _mantissa(x: float, digits: int) -> str:
    """x to `digits` significant figures, without an exponent and without trailing zeros."""
    if x == 0:
        return "0"
    places = digits - 1 - math.floor(math.log10(abs(x)))  # negative: round to tens, hundreds...
    decimals = max(places, 0)
    text = f"{round(x, places):.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def scientific(x, digits: int = DIGITS) -> str:
    """a×10ⁿ with `digits` significant figures in a: 1.99×10¹³."""
    if not _finite(x):
        return MISSING
    x = float(x)
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    mantissa = x / 10**exponent
    if abs(float(_mantissa(mantissa, digits))) >= 10:  # 9.996 rounds up to 10: carry into the exponent
        exponent, mantissa = exponent + 1, mantissa / 10
    return f"{_mantissa(mantissa, digits)}×10{str(exponent).translate(_SUPERSCRIPT)}"


def number(x, digits: int = DIGITS) -> str:
    """A plain quantity: 1.38, 0.0671, 1320; a×10ⁿ outside 0.001..100,000; an integer as itself."""
    if isinstance(x, bool) or (not isinstance(x, (int, float)) and not hasattr(x, "__float__")):
        return MISSING if x is None else str(x)
    if not _finite(x):
        return MISSING
    if float(x) == int(float(x)) and abs(float(x)) < 1e4 and not isinstance(x, float):
        return str(int(x))
    x = float(x)
    if x != 0 and not PLAIN_RANGE[0] <= abs(x) < PLAIN_RANGE[1]:
        return scientific(x, digits)
    text = _mantissa(x, digits)
    return scientific(x, digits) if abs(float(text)) >= PLAIN_RANGE[1] else text


def size(x, digits: int = DIGITS) -> str:
    """A count of parameters or tokens: 830K, 3.31M, 1.2B; below 1000 as itself."""
    if not _finite(x):
        return MISSING
    x = float(x)
    for scale, suffix in _SUFFIXES:
        if abs(x) >= scale * (1 - 0.5 * 10 ** -(digits - 1)):  # 999.7K is written 1M
            return f"{_mantissa(x / scale, digits)}{suffix}"
    return _mantissa(x, digits)


def flops(x, digits: int = DIGITS) -> str:
    """Compute in FLOPs, always a×10ⁿ: 2×10¹³."""
    return scientific(x, digits)


def percent(x, digits: int = DIGITS, signed: bool = False) -> str:
    """A fraction as a percentage with `digits` significant figures: 0.06712 -> 6.71%."""
    if not _finite(x):
        return MISSING
    text = _mantissa(100 * float(x), digits) + "%"
    return f"+{text}" if signed and float(x) > 0 else text


def interval(lo, hi, opened=(False, False), kind=number) -> str:
    """[lo, hi]; an edge on a bound of the law (or at the end of the sampled range) is open: (< lo, hi]."""
    if not (_finite(lo) and _finite(hi)):
        return MISSING
    low, high = opened or (False, False)
    left = f"(< {kind(lo)}" if low else f"[{kind(lo)}"
    right = f"> {kind(hi)})" if high else f"{kind(hi)}]"
    return f"{left}, {right}"


KINDS = {"C": flops, "flops": flops, "N_opt": size, "D_opt": size, "N_star": size, "params": size,
         "tokens": size, "rel_error": percent}  # fmt: skip


def quantity(name: str, x) -> str:
    """x formatted as the kind of quantity `name` is: compute, a size, a relative error or plain."""
    return KINDS.get(name, number)(x)
