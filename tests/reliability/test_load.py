"""Load: LOAD_CLIENTS (50) concurrent clients hit open pixels and click redirects on loopback
for LOAD_SECONDS (60), against gunicorn (the production server of requirements.txt) on the test
database with the Redis tracking buffer, while a worker sends a run and the buffer is drained
as the scheduled task does. No request may fail, and once the buffer is drained the recorded
opens and clicks (event rows and message counters) equal the requests made, per message."""

from __future__ import annotations

import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from campaigns.models import Message
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from leadcenter.factories import CampaignFactory, CampaignStepFactory, ContactListFactory
from leadcenter.testing import (
    ROOT,
    audience_add,
    database_url,
    received,
    redis_database_held,
    send_due_worker,
)
from tests.reliability.sizes import LOAD_CLIENTS, LOAD_SECONDS
from tracking import buffer, tokens
from tracking.models import TrackingEvent

S = Message.Status
E = TrackingEvent.Type
REDIS_URL = os.environ.get("RELIABILITY_REDIS_URL", "redis://127.0.0.1:6379/12")
TARGET_URL = "https://example.test/offer"
HUMAN = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
# Recipients of the run sent during the load: enough to keep the worker busy all along (it
# sends several hundred a second while the load runs on the same cores).
SENDING_RUN = max(500, 400 * LOAD_SECONDS)
_RESULTS_LOCK = threading.Lock()  # the clients add their counts to shared ones when done


@pytest.fixture
def redis_buffer(settings):
    """The Redis tracking buffer on a database of its own, held by this session alone (a lock
    file), empty before and after."""
    with redis_database_held(REDIS_URL, wait=600, socket_timeout=10) as client:
        settings.REDIS_URL = REDIS_URL
        settings.LEADCENTER_TRACKING_BUFFER = "redis"
        buffer.connections_reset()
        try:
            yield client
        finally:
            buffer.connections_reset()


class Gunicorn:
    """gunicorn on a port the kernel chose (bind port 0), serving the test database."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(suffix=".log")
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": REDIS_URL,
            "LEADCENTER_TRACKING_BUFFER": "redis",
            "DEBUG": "true",
            "LOG_LEVEL": "WARNING",
        }
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "leadcenter.wsgi",
                # --preload: the app is loaded before "Listening at", and the workers fork
                # ready to answer, so the load does not start on workers still booting.
                "--preload", "--bind", "127.0.0.1:0", "--workers", "2",
                "--worker-class", "gthread",
                "--threads", "16", "--backlog", "256", "--log-level", "info",
                "--error-logfile", self.log.name,
            ],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.port = self._port()
        self._warm_up()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def _port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if found := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.output()):
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"gunicorn did not start:\n{self.output()}")

    def _warm_up(self) -> None:
        """Both workers answer /healthz before the clock starts."""
        answered = 0
        deadline = time.monotonic() + 60
        while answered < 10:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    answered += 1
            except (OSError, http.client.HTTPException):
                time.sleep(0.2)
            finally:
                conn.close()
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gunicorn does not answer:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _client(port, paths, deadline, seed, made, errors, latencies) -> None:
    """One client: keep-alive requests until the deadline, each for a random pixel or link."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    mine: Counter = Counter()
    times: list[float] = []
    failures: list[str] = []
    while time.monotonic() < deadline:
        key, path, expected = rng.choice(paths)
        started = time.monotonic()
        try:
            conn.request("GET", path, headers={"User-Agent": HUMAN})
            response = conn.getresponse()
            response.read()
            ok = response.status == expected and (
                expected != 302 or response.getheader("Location") == TARGET_URL
            )
            if not ok:
                failures.append(f"{path}: {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{path}: {exc!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = False
        # A request counts as made once sent, answered or not: an error must not hide an event.
        mine[key] += 1
        times.append(time.monotonic() - started)
    conn.close()
    with _RESULTS_LOCK:
        made.update(mine)
        errors.extend(failures)
        latencies.extend(times)


def _campaign(name: str, n: int, account) -> object:
    audience = ContactListFactory(name=f"{name} audience")
    audience_add(audience, [f"{name.lower()}{i}@example.test" for i in range(n)])
    campaign = CampaignFactory(name=name, track_opens=True, track_clicks=True)
    campaign.lists.add(audience)
    campaign.accounts.add(account)
    CampaignStepFactory(
        campaign=campaign,
        position=1,
        subject="Hello",
        html_body=f'<p>Hi <a href="{TARGET_URL}">offer</a></p>',
    )
    return campaign


@pytest.mark.django_db(transaction=True)
def test_concurrent_pixels_and_clicks_while_a_run_sends_are_all_answered_and_counted(
    smtp_server, account, redis_buffer, figures
):
    account.daily_limit = account.per_minute_limit = SENDING_RUN * 2
    account.save()
    # Yesterday's run: its emails are the ones being opened and clicked.
    earlier = campaign_launch(campaign=_campaign("Earlier", 200, account), enqueue=False)
    run_prepare(run=earlier)
    dispatch_due()
    # Sent an hour ago: opens and clicks now are people's, not scanners' on arrival.
    Message.objects.filter(run=earlier).update(sent_at=timezone.now() - timedelta(hours=1))
    # Today's run, sent by a worker during the load; its first emails are opened too, while
    # the worker writes their outcomes.
    today = campaign_launch(campaign=_campaign("Today", SENDING_RUN, account), enqueue=False)
    run_prepare(run=today)
    targets = list(Message.objects.filter(run=earlier).values_list("pk", flat=True))
    targets += list(
        Message.objects.filter(run=today).order_by("pk").values_list("pk", flat=True)[:100]
    )
    paths = []
    for pk in targets:
        paths.append(((pk, E.OPENED), f"/t/o/{tokens.make_token(tokens.OPEN, pk)}.gif", 200))
        paths.append(((pk, E.CLICKED), f"/t/c/{tokens.make_click_token(pk, TARGET_URL)}/", 302))
    connection.close()  # the drain thread and this one each open their own

    server = Gunicorn()
    worker = None
    made: Counter = Counter()
    errors: list[str] = []
    latencies: list[float] = []
    drained_during = 0
    stop = threading.Event()

    drain_failures: list[str] = []

    def drain_loop() -> None:
        # As the scheduled drain task: a run that fails leaves its events in the list (they
        # leave it only once recorded) for the next run.
        nonlocal drained_during
        from django.db import connection as thread_connection

        try:
            while not stop.is_set():
                try:
                    drained_during += buffer.events_drain(max_seconds=5)
                except DatabaseError as exc:
                    drain_failures.append(str(exc).splitlines()[0])
                    thread_connection.close()
                stop.wait(0.5)
        finally:
            thread_connection.close()

    try:
        worker = send_due_worker(batch_size=50)
        drainer = threading.Thread(target=drain_loop)
        drainer.start()
        started = time.monotonic()
        deadline = started + LOAD_SECONDS
        clients = [
            threading.Thread(
                target=_client,
                args=(server.port, paths, deadline, n, made, errors, latencies),
            )
            for n in range(LOAD_CLIENTS)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        load_seconds = time.monotonic() - started
        worker_busy_all_along = worker.poll() is None
        pending_at_end = buffer.events_pending()
        stop.set()
        drainer.join()
        _, worker_errors = worker.communicate(timeout=600)
        drain_started = time.monotonic()
        drained_after = 0
        while buffer.events_pending():
            drained_after += buffer.events_drain(max_seconds=30)
        drain_seconds = time.monotonic() - drain_started
    finally:
        stop.set()
        if worker is not None and worker.poll() is None:
            worker.kill()
        server.stop()
    server_log = server.output()

    recorded = Counter(
        TrackingEvent.objects.filter(type__in=[E.OPENED, E.CLICKED]).values_list(
            "message_id", "type"
        )
    )
    counters = {
        pk: (opens, clicks)
        for pk, opens, clicks in Message.objects.filter(pk__in=targets).values_list(
            "pk", "open_count", "click_count"
        )
    }
    by_counter = Counter()
    for pk, (opens, clicks) in counters.items():
        by_counter[(pk, E.OPENED)] = opens
        by_counter[(pk, E.CLICKED)] = clicks
    mismatched = [k for k in set(made) | set(recorded) if made[k] != recorded[k]]
    mismatched_counters = [k for k in set(made) | set(by_counter) if made[k] != by_counter[k]]
    # Sent, and for the first 100, opened and clicked since.
    sent_today = Counter(Message.objects.filter(run=today).values_list("status", flat=True))
    sent_count = sum(sent_today[s] for s in (S.SENT, S.OPENED, S.CLICKED))
    sink = received(smtp_server)
    latencies.sort()
    requests = sum(made.values())
    result = {
        "clients": LOAD_CLIENTS,
        "seconds": round(load_seconds, 1),
        "requests": requests,
        "requests_per_second": round(requests / load_seconds, 1),
        "opens_requested": sum(n for (_, t), n in made.items() if t == E.OPENED),
        "clicks_requested": sum(n for (_, t), n in made.items() if t == E.CLICKED),
        "errors": len(errors),
        "first_errors": errors[:5],
        "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1)
        if latencies
        else None,
        "recorded_events": sum(recorded.values()),
        "mismatched_event_counts": len(mismatched),
        "mismatched_message_counters": len(mismatched_counters),
        "drained_during_load": drained_during,
        "drain_runs_failed": len(drain_failures),
        "drain_failures": sorted(set(drain_failures))[:3],
        "pending_in_buffer_at_end": pending_at_end,
        "drained_after_load": drained_after,
        "drain_after_seconds": round(drain_seconds, 2),
        "run_sent_during_load": sent_count,
        "run_statuses": dict(sent_today),
        "run_recipients": SENDING_RUN,
        "run_sent_twice": sum(1 for n in sink.values() if n > 1),
        "worker_sending_all_along": worker_busy_all_along,
        "worker_exit_code": worker.returncode,
    }
    figures("load", result)

    assert errors == [], server_log[-3000:]
    assert worker.returncode == 0, worker_errors.decode()
    assert "Traceback" not in server_log, server_log[-3000:]
    # The load held: on average at least one answered request per client and second.
    assert requests >= LOAD_CLIENTS * LOAD_SECONDS, result
    assert mismatched == [] and mismatched_counters == []
    assert sum(recorded.values()) == requests
    assert sent_count == SENDING_RUN, sent_today
    assert result["run_sent_twice"] == 0
