"""A worker killed with SIGKILL in the middle of a run, then restarted: no address receives the
same step twice, every recipient ends sent, failed, bounced, soft bounced or in doubt, and in
doubt are no more than the messages that were in flight."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from django.db import connection

from campaigns.models import Message
from campaigns.services import campaign_launch, run_prepare

ROOT = Path(__file__).resolve().parents[2]
BATCH = 20
S = Message.Status


def _database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    user = settings.get("USER") or "postgres"
    return f"postgres://{user}@{host}:{port}/{settings['NAME']}"


def _worker() -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "LEADCENTER_BATCH_SIZE": str(BATCH),
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "send_due", "--until-idle"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("trial", range(int(os.environ.get("LEADCENTER_CRASH_TRIALS", "3"))))
def test_a_worker_killed_mid_run_sends_nothing_twice_and_loses_nobody(
    smtp_server, make_campaign, add_contacts, trial
):
    rng = random.Random(trial)
    add_contacts(*(f"r{i}@example.test" for i in range(200)))
    add_contacts("x.user-unknown@example.test", "x.mailbox-full@example.test")
    run = campaign_launch(campaign=make_campaign(name=f"Crash {trial}"), enqueue=False)
    run_prepare(run=run)
    kill_after = rng.randint(1, 150)

    worker = _worker()
    deadline = time.monotonic() + 60
    while smtp_server.handler.accepted_count < kill_after and worker.poll() is None:
        assert time.monotonic() < deadline, "the worker sent nothing in time"
        time.sleep(0.005)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    in_flight_at_kill = Message.objects.filter(status=S.SENDING).count()

    restarted = _worker()
    _, errors = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, errors.decode()

    received = Counter()
    for delivery in smtp_server.handler.delivered:
        message_id = message_from_bytes(delivery.data, policy=policy.default)["Message-ID"]
        for rcpt in delivery.rcpt_to:
            received[(rcpt, message_id)] += 1
    duplicates = [key for key, n in received.items() if n > 1]
    assert duplicates == []
    statuses = Counter(Message.objects.values_list("status", flat=True))
    assert set(statuses) <= {S.SENT, S.BOUNCED, S.SOFT_BOUNCED, S.FAILED, S.SENDING}
    assert sum(statuses.values()) == 202
    assert statuses[S.SENDING] == in_flight_at_kill <= BATCH
    # Whatever the server accepted is either recorded as sent or in doubt; nothing else.
    assert len(received) <= statuses[S.SENT] + statuses[S.SENDING]
