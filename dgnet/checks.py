"""The checks every configuration value goes through: ConfigError names the key, the rule and the value.
Imports nothing of dgnet's but its errors, so any schema can use them without import cycles or torch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from dgnet.errors import ConfigError


def check_int(value: Any, key: str, minimum: int = 0) -> int:
    """`value` when it is an integer >= minimum (not a bool), else ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key}: must be {rule}, got {value!r}")
    return value


def check_number(value: Any, key: str, low: float = 0.0, high: float | None = None,
                 low_open: bool = False, why: str = "") -> float:
    """`value` if a number in [low, high] ((low, high] with `low_open`), else ConfigError (saying `why`)."""
    if isinstance(value, str):
        raise ConfigError(float_string_message(key, value))
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (value <= low if low_open else value < low) or (high is not None and value > high):
        where = f"> {low:g}" if low_open else f">= {low:g}"
        if high is not None:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low == -math.inf:
            where = "(finite)"
        raise ConfigError(f"{key}: must be a number {where}{f' ({why})' if why else ''}, got {value!r}")
    return value


def check_fields(cfg: Any, section: str) -> None:
    """What every config's fields share: YAML's lists held as tuples (the configs are frozen), and each
    `bool` field true or false."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, list):
            object.__setattr__(cfg, field.name, tuple(value))
        elif field.type == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{section}.{field.name}: must be true or false, got {value!r}")


def check_choice(value: Any, key: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    return value


def float_string_message(key: str, value: str) -> str:
    """What to say about a string given for a number: YAML 1.1 (PyYAML) reads `1e-3` as a string,
    because its floats need a dot and a signed exponent (`1.0e-3`)."""
    try:
        float(value)
    except ValueError:
        return f"{key}: must be a number, got the string {value!r}"
    mantissa, _, exponent = value.strip().lower().partition("e")
    if not exponent:
        return f"{key}: must be a number, got the string {value!r}; write it without quotes"
    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
    exponent = exponent if exponent[0] in "+-" else f"+{exponent}"
    return (f"{key}: must be a number, got the string {value!r}; YAML reads a number with an exponent "
            f"as a number only with a dot and a signed exponent: write {mantissa}e{exponent}")
