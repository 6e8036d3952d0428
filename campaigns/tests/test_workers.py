"""Real django-q2 clusters (`manage.py qcluster` subprocesses) against the test database: a
launched campaign is prepared and sent by the cluster through the ORM broker and through the
Redis broker, and two clusters sharing one database never send the same message twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.models import OrmQ, Task
from django_q.tasks import async_task

from campaigns.models import CampaignRun, Message
from campaigns.services import campaign_launch
from campaigns.simulator import SimulatedInternet, SimulatorServer
from contacts.models import Contact
from leadcenter.testing import ROOT, Cluster, cluster_env, received, redis_database_held

S = Message.Status
RunStatus = CampaignRun.Status
TIMEOUT = 90  # seconds a run may take before the test gives up and shows the clusters' logs
REDIS_URL = os.environ.get("LEADCENTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")


@pytest.fixture
def clusters(transactional_db) -> Iterator[Callable[..., Cluster]]:
    """Starts clusters on demand; stops every one of them before the test database is
    flushed or dropped (a connected cluster would block both)."""
    started: list[Cluster] = []

    def start(name: str = "cluster", **env: str) -> Cluster:
        cluster = Cluster(name, cluster_env(**env))
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in started:
            cluster.terminate()  # all at once: each takes a second or two to wind down
        for cluster in started:
            cluster.stop()


def _logs(clusters: list[Cluster]) -> str:
    return "\n".join(f"--- {c.name} (exit {c.process.poll()}):\n{c.output()}" for c in clusters)


def _wait_for(
    condition: Callable[[], bool], what: str, clusters: list[Cluster], *, tick=None
) -> None:
    """Poll the database until `condition()`; fail with the clusters' output on a time-out or
    when a cluster dies."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        dead = [c for c in clusters if c.process.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = "a cluster died" if dead else f"no {what} after {TIMEOUT} s"
            pytest.fail(f"{reason}\n{_logs(clusters)}")
        if tick is not None:
            tick()
        time.sleep(0.1)


def _run_done(run: CampaignRun) -> Callable[[], bool]:
    def done() -> bool:
        run.refresh_from_db()
        return run.status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.FILTERED)

    return done


def _task_recorded(func: str) -> Callable[[], bool]:
    # The monitor records a task's result after it returns, a moment after the run completes.
    return lambda: Task.objects.filter(func=func).exists()


def _assert_sent_once_each(run: CampaignRun, server: SimulatorServer, logs: str) -> None:
    expected = set(run.messages.values_list("recipient__email", "message_id"))
    sink = received(server)
    assert [key for key, n in sink.items() if n > 1] == [], logs
    assert set(sink) == expected, logs
    assert Counter(run.messages.values_list("status", flat=True)) == {S.SENT: len(expected)}
    # Claimed once each: a second claim would have counted a second attempt.
    assert set(run.messages.values_list("attempts", flat=True)) == {1}


def _assert_task_succeeded(func: str, logs: str) -> None:
    task = Task.objects.filter(func=func).first()
    assert task is not None, logs
    assert task.success, f"{func} failed: {task.result}\n{logs}"


def _require_orm_broker() -> None:
    if "orm" not in settings.Q_CLUSTER:
        pytest.skip("this test process enqueues to Redis (REDIS_URL is set), not the ORM broker")


@pytest.mark.django_db(transaction=True)
def test_a_cluster_on_the_orm_broker_prepares_and_sends_a_launched_run(
    clusters, smtp_server, make_campaign, add_contacts
):
    _require_orm_broker()
    emails = [f"orm{i}@example.test" for i in range(20)]
    add_contacts(*emails)
    campaign = make_campaign(name="Workers ORM")
    cluster = clusters("orm")
    cluster.wait_until_running()

    # Not in an atomic block (transaction=True): on_commit enqueues at once, and the task row
    # is committed for the cluster to see.
    run = campaign_launch(campaign=campaign, enqueue=True)
    assert OrmQ.objects.exists() or Task.objects.exists(), "nothing was enqueued"

    _wait_for(_run_done(run), "finished run", [cluster])
    _wait_for(_task_recorded("campaigns.tasks.run_prepare"), "task result", [cluster])
    logs = _logs([cluster])
    assert run.status == RunStatus.COMPLETED, logs
    assert run.total_recipients == 20
    _assert_task_succeeded("campaigns.tasks.run_prepare", logs)
    _assert_sent_once_each(run, smtp_server, logs)
    assert Counter(rcpt for rcpt, _ in received(smtp_server)) == dict.fromkeys(emails, 1)
    assert OrmQ.objects.count() == 0  # acknowledged


@pytest.fixture
def redis_db() -> Iterator[str]:
    """The Redis database of the test, empty, and this session's alone: every cluster named
    "leadcenter" on it takes tasks from the same list, so a second test session on this
    machine (its own test database) must wait, or its cluster would run our tasks on its
    database."""
    with redis_database_held(REDIS_URL, wait=TIMEOUT):
        yield REDIS_URL


@pytest.mark.django_db(transaction=True)
def test_a_cluster_on_the_redis_broker_prepares_and_sends_a_launched_run(
    clusters, redis_db, smtp_server, make_campaign, add_contacts
):
    emails = [f"redis{i}@example.test" for i in range(20)]
    add_contacts(*emails)
    make_campaign(name="Workers Redis")
    cluster = clusters("redis", REDIS_URL=redis_db)
    cluster.wait_until_running()

    # The launch enqueues from a subprocess with REDIS_URL set: django_q.conf.Conf reads
    # Q_CLUSTER once, when it is first imported, into class attributes that the brokers and
    # async_task read directly, so overriding settings here would not reach it, and patching
    # those attributes would leave this process half ORM, half Redis. A fresh process reads
    # the settings exactly as a web server or the launch command does in production.
    launch = subprocess.run(
        [sys.executable, "manage.py", "launch_campaign", "Workers Redis"],
        cwd=ROOT,
        env=cluster_env(REDIS_URL=redis_db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launch.returncode == 0, launch.stdout + launch.stderr
    run = CampaignRun.objects.get(campaign__name="Workers Redis")

    _wait_for(_run_done(run), "finished run", [cluster])
    _wait_for(_task_recorded("campaigns.tasks.run_prepare"), "task result", [cluster])
    logs = _logs([cluster])
    assert run.status == RunStatus.COMPLETED, logs
    assert run.total_recipients == 20
    _assert_task_succeeded("campaigns.tasks.run_prepare", logs)
    _assert_sent_once_each(run, smtp_server, logs)
    assert Counter(rcpt for rcpt, _ in received(smtp_server)) == dict.fromkeys(emails, 1)
    assert OrmQ.objects.count() == 0  # nothing went through the ORM broker


class SlowInternet(SimulatedInternet):
    """Accepts every message after a short pause, so a run lasts long enough for both
    clusters' workers to claim batches at the same time."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow_smtp_server():
    with SimulatorServer(SlowInternet()) as server:
        yield server


@pytest.mark.django_db(transaction=True)
def test_two_clusters_sharing_the_database_never_send_a_message_twice(
    clusters, slow_smtp_server, smtp_server, account, audience, make_campaign
):
    # On PostgreSQL the claimers skip each other's locked rows (FOR UPDATE SKIP LOCKED); on
    # SQLite they queue for the write lock and the conditional UPDATE decides. Both must hold.
    _require_orm_broker()
    account.smtp_port = slow_smtp_server.port
    account.save(update_fields=["smtp_port"])
    count = 320
    contacts = Contact.objects.bulk_create(
        Contact(email=f"both{i}@example.test", first_name=f"N{i}") for i in range(count)
    )
    Contact.lists.through.objects.bulk_create(
        Contact.lists.through(contact_id=c.pk, contactlist_id=audience.pk) for c in contacts
    )
    campaign = make_campaign(name="Workers Both")
    # Small batches, two workers each, and a base URL per cluster: the List-Unsubscribe
    # header of every email received says which cluster sent it.
    started = [
        clusters(
            name,
            Q_WORKERS="2",
            LEADCENTER_BATCH_SIZE="10",
            LEADCENTER_BASE_URL=f"http://{name}.cluster.test",
        )
        for name in ("a", "b")
    ]
    for cluster in started:
        cluster.wait_until_running()

    run = campaign_launch(campaign=campaign, enqueue=True)
    fed = 0

    def feed() -> None:
        # run_prepare dispatches once. More dispatch tasks (as the schedule and resumes
        # enqueue them) make several claimers work at once. A pusher takes whatever is waiting
        # into its cluster's own queue, even while its workers are busy, so a task is added
        # whenever none is waiting: each goes to the first cluster to poll, and both get some.
        # Only once the audience is ready: a task before that finds nothing to send, and a
        # cluster that used up its tasks then would leave the whole run to the other.
        nonlocal fed
        if run.status not in (RunStatus.WAITING, RunStatus.RUNNING):
            return
        if fed < 60 and not OrmQ.objects.filter(lock__lte=timezone.now()).exists():
            async_task("campaigns.tasks.dispatch", group="leadcenter")
            fed += 1

    _wait_for(_run_done(run), "finished run", started, tick=feed)
    logs = _logs(started)
    assert run.status == RunStatus.COMPLETED, logs
    assert run.total_recipients == count
    _assert_sent_once_each(run, slow_smtp_server, logs)
    assert smtp_server.handler.delivered == []

    # Which cluster sent each message, and when each cluster claimed its first and last one:
    # both sent, at the same time.
    sender: dict[str, str] = {}
    for delivery in slow_smtp_server.handler.delivered:
        message_id = message_from_bytes(delivery.data, policy=policy.default)["Message-ID"]
        for name in ("a", "b"):
            if f"http://{name}.cluster.test/".encode() in delivery.data:
                sender[message_id] = name
    claimed: dict[str, list] = {"a": [], "b": []}
    for message_id, claimed_at in run.messages.values_list("message_id", "claimed_at"):
        claimed[sender[message_id]].append(claimed_at)
    shares = {name: len(times) for name, times in claimed.items()}
    assert all(shares.values()), f"one cluster sent everything: {shares}, {fed} tasks\n{logs}"
    assert min(claimed["a"]) <= max(claimed["b"]) and min(claimed["b"]) <= max(claimed["a"]), (
        f"the clusters sent one after the other: {shares}\n{logs}"
    )
