"""Sizes of the reliability trials, from the environment: `make test-reliability` runs the
full ones, CI shorter ones."""

from __future__ import annotations

import os


def size(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


TRIALS = size("RELIABILITY_TRIALS", 10)
RECIPIENTS = size("RELIABILITY_RECIPIENTS", 5000)
LOAD_SECONDS = size("LOAD_SECONDS", 60)
LOAD_CLIENTS = size("LOAD_CLIENTS", 50)
EVENTS = size("RELIABILITY_EVENTS", 1000)
DROP_RECIPIENTS = size("RELIABILITY_DROP_RECIPIENTS", 600)
