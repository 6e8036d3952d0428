"""Test support shared by the app tests and the reliability suite (tests/reliability/): worker
processes against the test database, a large audience in a few statements, what an SMTP sink
received, and one crash trial (a worker killed with SIGKILL mid-run, then restarted) with the
figures it measures. Not imported by the application."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from django.db import connection

from campaigns.models import Campaign, Message, Recipient
from campaigns.services import campaign_launch, run_prepare
from campaigns.simulator import SimulatorServer
from contacts.models import Contact, ContactList

ROOT = Path(__file__).resolve().parents[1]
S = Message.Status
# What a message may end as after a crash and a restart: an outcome, or in doubt (`sending`).
SETTLED = {S.SENT, S.DELIVERED, S.SOFT_BOUNCED, S.BOUNCED, S.FAILED}


@contextmanager
def redis_database_held(url: str, *, wait: float, socket_timeout: float = 5) -> Iterator:
    """A Redis database for one test, empty before and after, and this test session's alone
    (a lock file per database number: a second session on this machine waits for it). Skips
    the test when Redis does not answer. Yields the client."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=socket_timeout)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis is not reachable at {url}: {exc}")
    db = client.connection_pool.connection_kwargs.get("db", 0)
    lock_path = Path(tempfile.gettempdir()) / f"leadcenter-test-redis-{db}.lock"
    with open(lock_path, "w") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {lock_path} for {wait:.0f} s")
                time.sleep(0.2)
        client.flushdb()
        try:
            yield client
        finally:
            client.flushdb()
            client.close()


def database_url() -> str:
    """The test database as a DATABASE_URL, for worker subprocesses."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    user = settings.get("USER") or "postgres"
    return f"postgres://{user}@{host}:{port}/{settings['NAME']}"


def send_due_worker(*, batch_size: int, **env: str) -> subprocess.Popen:
    """`manage.py send_due --until-idle` on the test database: the dispatch a worker runs.
    Its PostgreSQL sessions carry `worker.application_name` (libpq's PGAPPNAME)."""
    application_name = f"leadcenter-test-worker-{uuid.uuid4().hex[:12]}"
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "send_due", "--until-idle"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url(),
            "LEADCENTER_BATCH_SIZE": str(batch_size),
            "LOG_LEVEL": "WARNING",
            "PGAPPNAME": application_name,
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    worker.application_name = application_name
    return worker


def wait_for_sessions_to_end(worker: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until the database has ended a dead worker's sessions. A statement the worker sent
    just before it was killed still runs to its end in the server, and a statement that is its
    own transaction (the record of a batch) commits: what was in flight is what is left after
    that."""
    if connection.vendor != "postgresql":
        return  # SQLite has no server: a killed process's transaction is rolled back with it
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                [worker.application_name],
            )
            if not cursor.fetchone()[0]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the killed worker's sessions lasted past {timeout} s")
            time.sleep(0.01)


def audience_add(audience: ContactList, emails: list[str]) -> None:
    """Contacts on the list in two statements, for audiences of thousands."""
    contacts = Contact.objects.bulk_create(
        Contact(email=email, first_name=f"N{i}") for i, email in enumerate(emails)
    )
    Contact.lists.through.objects.bulk_create(
        Contact.lists.through(contact_id=c.pk, contactlist_id=audience.pk) for c in contacts
    )


def received(server: SimulatorServer) -> Counter:
    """(address, Message-ID) -> how many times the SMTP sink accepted it."""
    counts: Counter = Counter()
    for delivery in list(server.handler.delivered):
        message_id = message_from_bytes(delivery.data, policy=policy.default)["Message-ID"]
        for rcpt in delivery.rcpt_to:
            counts[(rcpt, message_id)] += 1
    return counts


@dataclass
class CrashFigures:
    recipients: int
    batch_size: int
    killed_after_accepted: int  # messages the sink had accepted when the worker was killed
    in_flight_at_kill: int  # messages claimed (`sending`) at the kill
    accepted_by_sink: int
    sent: int
    soft_bounced: int
    bounced: int
    failed: int
    in_doubt: int  # still `sending` after the restart finished: never resent, left to a person
    duplicates: int  # an address that received the same step twice
    lost: int  # a recipient neither sent, failed, bounced, soft bounced nor in doubt
    accepted_not_recorded: int  # accepted by the sink but recorded neither sent nor in doubt
    restart_exit_code: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def crash_trial(
    *,
    server: SimulatorServer,
    campaign: Campaign,
    rng: random.Random,
    batch_size: int,
    timeout: float = 300,
) -> CrashFigures:
    """Launch a run, start a worker, kill it with SIGKILL at a random moment (after a random
    number of accepted messages, plus a random fraction of a batch's time), restart it and let
    it finish; then count what the sink received against what the database says."""
    started = time.monotonic()
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    run.refresh_from_db()
    to_send = run.total_recipients - run.total_filtered
    kill_after = rng.randint(1, max(1, to_send - batch_size))

    worker = send_due_worker(batch_size=batch_size)
    deadline = time.monotonic() + timeout
    while server.handler.accepted_count < kill_after and worker.poll() is None:
        if time.monotonic() > deadline:
            worker.kill()
            raise AssertionError(f"the worker sent nothing in {timeout} s")
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.05))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for_sessions_to_end(worker)
    killed_after = server.handler.accepted_count
    in_flight = Message.objects.filter(run=run, status=S.SENDING).count()

    restarted = send_due_worker(batch_size=batch_size)
    _, errors = restarted.communicate(timeout=timeout)
    if restarted.returncode != 0:
        raise AssertionError(f"the restarted worker failed:\n{errors.decode()}")

    sink = received(server)
    # The same step to the same address twice, under one Message-ID or two.
    step_of = dict(Message.objects.filter(run=run).values_list("message_id", "step__position"))
    per_step: Counter = Counter()
    for (rcpt, mid), n in sink.items():
        per_step[(rcpt.lower(), step_of.get(mid, mid))] += n
    duplicates = sum(n - 1 for n in per_step.values() if n > 1)
    statuses = Counter(Message.objects.filter(run=run).values_list("status", flat=True))
    status_of = dict(Message.objects.filter(run=run).values_list("message_id", "status"))
    accepted_not_recorded = sum(
        1 for (_, mid) in sink if status_of.get(mid) not in (S.SENT, S.DELIVERED, S.SENDING)
    )
    pending = run.recipients.exclude(status=Recipient.Status.FILTERED)
    lost = pending.exclude(messages__status__in=[*SETTLED, S.SENDING]).count()
    return CrashFigures(
        recipients=to_send,
        batch_size=batch_size,
        killed_after_accepted=killed_after,
        in_flight_at_kill=in_flight,
        accepted_by_sink=sum(sink.values()),
        sent=statuses[S.SENT] + statuses[S.DELIVERED],
        soft_bounced=statuses[S.SOFT_BOUNCED],
        bounced=statuses[S.BOUNCED],
        failed=statuses[S.FAILED],
        in_doubt=statuses[S.SENDING],
        duplicates=duplicates,
        lost=lost,
        accepted_not_recorded=accepted_not_recorded,
        restart_exit_code=restarted.returncode,
        seconds=round(time.monotonic() - started, 2),
    )


class Cluster:
    """One `manage.py qcluster` in its own session, its output in a file (a pipe nobody reads
    would fill up and block the cluster)."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the workers it forks can be killed with it
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def wait_until_running(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while " running." not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cluster {self.name} did not start:\n{self.output()}")
            time.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM: the cluster finishes its tasks, stops its workers and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole session if it takes too long or left anything
        behind."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


def cluster_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "Q_WORKERS": "1",
        # django-q logs through the root logger here: INFO shows when a cluster is running and
        # which tasks it processed, for the failure messages.
        "LOG_LEVEL": "INFO",
        **extra,
    }
    if "REDIS_URL" not in extra:
        env.pop("REDIS_URL", None)
    return env
