"""The reliability suite: figures recorder and sizes.

Each test hands its figures to `figures(name, data)`: they are printed and written to
var/reliability/<database vendor>/<name>.json, which RELIABILITY.md quotes. Sizes come from the
environment so that `make test-reliability` runs the full trials and CI a shorter version:
RELIABILITY_TRIALS (crash trials, 10), RELIABILITY_RECIPIENTS (per crash trial, 5000),
LOAD_SECONDS (60), LOAD_CLIENTS (50), RELIABILITY_EVENTS (1000).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from leadcenter.testing import ROOT

OUT = ROOT / "var" / "reliability"
_recorded: list[tuple[str, dict]] = []


@pytest.fixture(scope="session", autouse=True)
def _fresh_figures(django_db_setup, django_db_blocker) -> None:
    """RELIABILITY_FRESH=1 (make test-reliability): this database's figures of an earlier run
    are removed first, so the report shows only this run's."""
    import os
    import shutil

    if os.environ.get("RELIABILITY_FRESH") == "1":
        with django_db_blocker.unblock():
            shutil.rmtree(OUT / connection.vendor, ignore_errors=True)


@pytest.fixture
def figures() -> Callable[[str, dict], Path]:
    def record(name: str, data: dict) -> Path:
        vendor = connection.vendor
        folder = OUT / vendor
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        payload = {
            "test": name,
            "database": vendor,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            **data,
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        _recorded.append((f"{vendor}/{name}", data))
        print(f"\n[reliability] {vendor}/{name}: {json.dumps(data, default=str)}")
        return path

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if not _recorded:
        return
    terminalreporter.section("reliability figures (var/reliability/)")
    for name, data in _recorded:
        flat = {k: v for k, v in data.items() if not isinstance(v, list | dict)}
        terminalreporter.write_line(f"{name}: {json.dumps(flat, default=str)}")
