"""LeadCenter benchmarks: each prints a ratio against a raw baseline measured in the same run.

`python -m bench` runs them all (`--quick` for smaller sizes, `--only send|audience`); each
module also runs on its own (`python -m bench.send_throughput`, `python -m bench.audience`).
They never assert times: a ratio that misses its target is printed as MISS, nothing fails.

    send_throughput  the whole send pipeline vs raw smtplib to the same SMTP sink
    audience         run_prepare vs a bare INSERT ... SELECT of the same rows, and its scaling

This module imports nothing from Django, so the helper processes (`bench.worker`) start light.
"""
