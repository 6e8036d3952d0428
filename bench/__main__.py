"""Run LeadCenter's benchmarks and print a summary of their ratios against their targets.

    python -m bench                    # full sizes (several minutes)
    python -m bench --quick            # 1/10 of the sizes, a smoke check
    python -m bench --only send        # or audience, pixel, webhooks, bounces, contacts_import,
                                       # reports, sent_emails

Each benchmark prints its own table first (see bench/send_throughput.py and bench/audience.py
for what is measured and against which baseline). A MISS is printed, never raised: the exit
code is 0 whatever the figures, non-zero only when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import importlib
import time

from bench.common import Result, say

# name -> (module, entry point). Entry points take `quick` and return Result objects or
# (name, value, target or None, passed) tuples.
BENCHMARKS = {
    "send": ("bench.send_throughput", "run"),
    "audience": ("bench.audience", "run"),
    "pixel": ("bench.pixel", "main"),
    "webhooks": ("bench.webhooks", "run"),
    "bounces": ("bench.bounces", "run"),
    "contacts_import": ("bench.contacts_import", "main"),
    "reports": ("bench.reports", "main"),
    "sent_emails": ("bench.sent_emails", "main"),
}


def _line(benchmark: str, item) -> tuple[str, bool]:
    if isinstance(item, Result):
        return item.line(), item.passed
    name, value, target, passed = item
    if target is None:
        return f"INFO  {benchmark:<16} {name:<44} {value:>10.3f}  (no target)", True
    verdict = "PASS" if passed else "MISS"
    return f"{verdict}  {benchmark:<16} {name:<44} {value:>10.3f}  (target {target:g})", passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke check")
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    args = parser.parse_args(argv)

    started = time.monotonic()
    lines: list[tuple[str, bool]] = []
    for name, (module, entry) in BENCHMARKS.items():
        if args.only and name != args.only:
            continue
        results = getattr(importlib.import_module(module), entry)(quick=args.quick)
        lines += [_line(name, item) for item in results]
        say()

    width = 96
    say("=" * width)
    say(
        f"SUMMARY ({'quick' if args.quick else 'full'} sizes, "
        f"{time.monotonic() - started:.0f}s): ratios against raw baselines measured in this run"
    )
    say("-" * width)
    for line, _passed in lines:
        say(line)
    missed = [line for line, passed in lines if not passed]
    say("-" * width)
    if missed:
        say(f"{len(missed)} of {len(lines)} MISSED their target")
    else:
        say(f"all {len(lines)} figures meet their targets")
    say("=" * width)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
