"""Small strict readers for settings taken from the environment.

Each returns the default when the variable is unset or empty, and refuses a value it cannot
read with ImproperlyConfigured, so a typo fails at start-up instead of at 3 a.m.
"""

from __future__ import annotations

import os
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of true/false/1/0/yes/no, not {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "").strip()
    if not value:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(name: str, value: str) -> timedelta:
    """'3d', '12h', '90m', '45s' or a plain number of seconds."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    try:
        amount = float(number)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be a duration such as 3d, 12h, 90m or 45s, not {value!r}"
        ) from None
    if amount <= 0:
        raise ImproperlyConfigured(f"{name} must be a positive duration, not {value!r}")
    return timedelta(seconds=amount * _UNITS[unit])


def env_duration(name: str, default: str) -> timedelta:
    return parse_duration(name, env_str(name, default))
