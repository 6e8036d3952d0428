"""The database connection dropped mid-batch (PostgreSQL: pg_terminate_backend of every backend
of the workers, three times during a run of RELIABILITY_DROP_RECIPIENTS, 600) and recovered:
the worker (a real django-q2 cluster) survives, nothing is sent twice, and the run completes. A
message whose outcome could not be written when its connection died stays in doubt (`sending`):
never resent, left to a person; none is lost."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ
from django_q.tasks import async_task

from campaigns.models import CampaignRun, Message
from campaigns.services import campaign_launch
from campaigns.simulator import SimulatedInternet, SimulatorServer
from leadcenter.testing import Cluster, audience_add, cluster_env, received
from tests.reliability.sizes import DROP_RECIPIENTS

S = Message.Status
RECIPIENTS = DROP_RECIPIENTS
BATCH = 20
DROPS = 3
TIMEOUT = 240


class SlowInternet(SimulatedInternet):
    """Accepts every message after a short pause, so batches are in hand when the drop comes."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def _terminate_worker_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return sum(1 for (ok,) in cursor.fetchall() if ok)


@pytest.mark.django_db(transaction=True)
def test_the_database_connection_dropped_mid_batch_is_survived_and_nothing_sent_twice(
    account, audience, make_campaign, figures, settings
):
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend: PostgreSQL only")
    if "orm" not in settings.Q_CLUSTER:
        pytest.skip("this test process enqueues to the ORM broker")
    rng = random.Random("database-drop")
    with SimulatorServer(SlowInternet()) as sink:
        account.smtp_port = sink.port
        account.daily_limit = account.per_minute_limit = RECIPIENTS * 2
        account.save()
        audience_add(audience, [f"d{i}@example.test" for i in range(RECIPIENTS)])
        campaign = make_campaign(name="Database drop")
        cluster = Cluster(
            "drop",
            cluster_env(
                LEADCENTER_BATCH_SIZE=str(BATCH),
                # In doubt after 3 s instead of 15 min, so the run can complete in the test.
                LEADCENTER_IN_DOUBT_AFTER="3s",
                LOG_LEVEL="INFO",
            ),
        )
        try:
            cluster.wait_until_running()
            run = campaign_launch(campaign=campaign, enqueue=True)
            # Drop points: spread over the run, each at a random number of accepted messages.
            points = sorted(rng.sample(range(RECIPIENTS // 10, RECIPIENTS * 8 // 10), DROPS))
            drops: list[dict] = []
            fed = 0
            deadline = time.monotonic() + TIMEOUT
            while True:
                run.refresh_from_db()
                if run.status in (CampaignRun.Status.COMPLETED, CampaignRun.Status.FAILED):
                    break
                assert cluster.process.poll() is None, f"the cluster died\n{cluster.output()}"
                assert time.monotonic() < deadline, f"run {run.status}\n{cluster.output()}"
                if len(drops) < DROPS and sink.handler.accepted_count >= points[len(drops)]:
                    in_flight = run.messages.filter(status=S.SENDING).count()
                    drops.append(
                        {
                            "at_accepted": sink.handler.accepted_count,
                            "sending_at_drop": in_flight,  # in doubt so far included
                            "backends_terminated": _terminate_worker_backends(),
                        }
                    )
                # The schedule's part: a dispatch task whenever none is waiting.
                if not OrmQ.objects.filter(lock__lte=timezone.now()).exists():
                    async_task("campaigns.tasks.dispatch", group="leadcenter")
                    fed += 1
                time.sleep(0.2)
            survived = cluster.process.poll() is None
            log = cluster.output()
        finally:
            cluster.terminate()
            cluster.stop()
        sink_counts = received(sink)

    statuses = Counter(run.messages.values_list("status", flat=True))
    status_of = dict(run.messages.values_list("message_id", "status"))
    duplicates = sum(n - 1 for n in sink_counts.values() if n > 1)
    accepted_not_recorded = sum(
        1 for (_, mid) in sink_counts if status_of.get(mid) not in (S.SENT, S.SENDING)
    )
    lost = run.messages.exclude(status__in=[S.SENT, S.SENDING]).count()
    result = {
        "recipients": RECIPIENTS,
        "batch_size": BATCH,
        "drops": drops,
        "backends_terminated": sum(d["backends_terminated"] for d in drops),
        "cluster_survived": survived,
        "run_status": run.status,
        "sent": statuses[S.SENT],
        "in_doubt": statuses[S.SENDING],
        "duplicates": duplicates,
        "lost": lost,
        "accepted_not_recorded": accepted_not_recorded,
        "dispatch_tasks_fed": fed,
        "database_errors_in_log": log.count("OperationalError") + log.count("InterfaceError"),
    }
    figures("database-drop", result)

    assert len(drops) == DROPS and result["backends_terminated"] >= DROPS, log[-4000:]
    assert survived, log[-4000:]
    assert run.status == CampaignRun.Status.COMPLETED, log[-4000:]
    assert duplicates == 0
    assert lost == 0
    assert accepted_not_recorded == 0
    assert statuses[S.SENDING] <= BATCH * DROPS
    assert statuses[S.SENT] + statuses[S.SENDING] == RECIPIENTS
