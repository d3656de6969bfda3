"""Argument checks shared by qlab's public functions: a wrong type is a TypeError, a value out of range a
ValueError, and both name the argument and what it may be (before any work is done)."""

from __future__ import annotations

import math

import torch

SEED_RANGE = (-2**63, 2**64)  # what torch.manual_seed / torch.Generator.manual_seed take


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """`value` must be an int (not a bool) with low <= value (<= high)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_seed(value: object, name: str = "seed") -> int:
    """A seed torch's generators take: an int in [-2**63, 2**64)."""
    check_int(name, value)
    if not SEED_RANGE[0] <= value < SEED_RANGE[1]:
        raise ValueError(f"{name} must be an int in [-2**63, 2**64) (what torch.manual_seed takes), got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_float(name: str, value: object, low: float, high: float, low_open: bool = True) -> float:
    """`value` must be a real number in (low, high] (or [low, high] with low_open=False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    if math.isnan(value) or too_low or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return value


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or Inf in ``x``: one reduction when the sum is finite (a NaN or Inf anywhere makes it NaN or
    Inf), the element-wise check only when the sum is not (then a finite sum may have overflowed)."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
