"""argparse value types shared by the command lines: clear errors, never tracebacks."""

from __future__ import annotations

import argparse
import math


def positive_int(text) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text) -> float:
    """A finite number > 0 (``inf`` would silently switch off what it limits)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


SEED_MAX = 2**32 - 1


def seed_value(text) -> int:
    """A random seed: an integer 0 .. 2**32 - 1 (NumPy's seed range for one word)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**32-1 = {SEED_MAX}, got {value}")
    return value


def positive_int_list(text) -> tuple:
    """Comma-separated integers, each at least 1."""
    return tuple(positive_int(x) for x in str(text).split(","))


def float_list(text) -> tuple:
    """Comma-separated numbers (empty: none)."""
    try:
        return tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
