"""Hypothesis settings for the fuzzers, and a count of the inputs they tried.

HYPOTHESIS_PROFILE picks the profile: "ci" (the default: derandomized, so CI is repeatable and
stays well under two minutes per database) or "full" (random, ten times the examples, for a
long local run: `HYPOTHESIS_PROFILE=full pytest tests/security`). The settings are applied per
test, never loaded globally, so the other apps' hypothesis tests keep their own.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

PROFILES = {
    "ci": {"max_examples": 40, "derandomize": True},
    "full": {"max_examples": 400, "derandomize": False},
}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise RuntimeError(f"HYPOTHESIS_PROFILE must be one of {', '.join(PROFILES)}")

TRIED: Counter[str] = Counter()


def fuzz_settings(scale: float = 1.0) -> settings:
    """Settings for one fuzzer; `scale` shrinks or grows its share of examples (a slow
    target, such as a whole admin page, gets fewer)."""
    profile = PROFILES[PROFILE]
    return settings(
        max_examples=max(5, int(profile["max_examples"] * scale)),
        derandomize=profile["derandomize"],
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def tried(name: str) -> None:
    TRIED[name] += 1
