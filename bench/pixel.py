"""Open pixel under a real HTTP server.

Measured: requests per second of `/t/o/<token>.gif` (valid tokens of real sent messages, so each
request records an open through the state machine) served by gunicorn with 2 workers, with 16
concurrent clients on loopback for a fixed time: three phases of 5 s for each side, alternating,
the best phase of each side counting (`--quick`: one phase of 3 s each).
Baseline: the same server, same clients, a view that does nothing but answer the same GIF.
Target: the pixel at least 0.7x the baseline's rate.

With Redis (as in production; REDIS_URL defaults to db 8 here) the pixel queues the open and
the drain task applies it; the benchmark drains afterwards and checks every answered request
was recorded exactly once. Run with LEADCENTER_TRACKING_BUFFER=inline to measure recording in
the request instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Result, migrate, say, setup_django, stopwatch, table, truncate, warn

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_messages(n: int) -> list[int]:
    from django.utils import timezone

    from campaigns.models import Message
    from leadcenter.factories import MessageFactory

    truncate()
    first = MessageFactory()
    Message.objects.filter(pk=first.pk).update(status="sent", sent_at=timezone.now())
    pks = [first.pk]
    for _ in range(n - 1):
        m = MessageFactory(
            recipient__run=first.run, step=first.step, recipient__account=first.account
        )
        pks.append(m.pk)
    Message.objects.update(status="sent", sent_at=timezone.now() - timezone.timedelta(hours=1))
    return pks


async def _load(port: int, paths: list[str], seconds: float) -> int:
    """CLIENTS clients requesting the paths round-robin for `seconds`; returns 200s received."""
    done = 0
    failed: list[str] = []
    deadline = time.monotonic() + seconds
    agent = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"

    async def client(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            path = paths[i % len(paths)]
            i += CLIENTS
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                await writer.drain()
                response = await reader.read()
                writer.close()
            except OSError:
                failed.append(path)
                continue
            if response.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                failed.append(response[:200].decode(errors="replace"))

    await asyncio.gather(*(client(k) for k in range(CLIENTS)))
    if failed:
        say(f"  {len(failed)} requests failed, e.g. {failed[0]!r}")
    return done


def main(*, quick: bool = False) -> list[Result]:
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/8")
    setup_django("pixel")
    migrate()
    from campaigns.models import Message
    from tracking import tokens

    seconds, rounds = (3.0, 1) if quick else (5.0, 3)
    pks = _make_messages(50 if quick else 200)
    pixel_paths = [f"/t/o/{tokens.make_token(tokens.OPEN, pk)}.gif" for pk in pks]
    noop_paths = [p.replace("/t/o/", "/noop/") for p in pixel_paths]
    port = _free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.pixel_settings",
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    server = subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
        [sys.executable, "-m", "gunicorn", "leadcenter.wsgi", "--workers", "2",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        asyncio.run(_load(port, noop_paths[:5] + pixel_paths[:5], 1.0))  # warm both
        from tracking.buffer import KEY, _redis, events_drain, events_pending

        _redis().delete(KEY)
        opens_before = sum(Message.objects.values_list("open_count", flat=True))
        # Alternating phases, the best of each side: on a shared machine the load of other
        # processes changes from one phase to the next, and would otherwise decide the ratio.
        noop_rates, pixel_rates, pixel_done = [], [], 0
        for _ in range(rounds):
            noop_rates.append(asyncio.run(_load(port, noop_paths, seconds)) / seconds)
            done = asyncio.run(_load(port, pixel_paths, seconds))
            pixel_done += done
            pixel_rates.append(done / seconds)
        noop, pixel = max(noop_rates), max(pixel_rates)

        pending = events_pending()
        with stopwatch() as drained:
            while events_pending():
                events_drain(batch=1000)
        recorded = sum(Message.objects.values_list("open_count", flat=True)) - opens_before
    finally:
        server.terminate()
        server.wait(timeout=10)
    say(table(
        ["view", "requests/s"],
        [["do-nothing GIF (baseline)", noop], ["open pixel (records the open)", pixel]],
    ))  # fmt: skip
    say("phases (requests/s): do-nothing " + ", ".join(f"{r:.0f}" for r in noop_rates)
        + "; pixel " + ", ".join(f"{r:.0f}" for r in pixel_rates))  # fmt: skip
    say(
        f"opens recorded {recorded:,} for {pixel_done:,} pixel requests answered "
        f"({pending:,} queued, drained in {drained[0]:.1f} s)"
    )
    if recorded != pixel_done:
        warn(f"MISMATCH: {pixel_done - recorded:,} answered opens were not recorded")
    return [Result("pixel", "open pixel vs do-nothing view", pixel / noop, 0.7, True)]


if __name__ == "__main__":
    for result in main(quick="--quick" in sys.argv):
        say(result.line())
