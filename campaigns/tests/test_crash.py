"""A worker killed with SIGKILL in the middle of a run, then restarted: no address receives the
same step twice, every recipient ends sent, failed, bounced, soft bounced or in doubt, and in
doubt are no more than the messages that were in flight. A quick version of the reliability
suite's crash trials (tests/reliability/test_crash.py: 5,000 recipients, 10 trials)."""

from __future__ import annotations

import os
import random

import pytest

from leadcenter.testing import crash_trial

BATCH = 20


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("trial", range(int(os.environ.get("LEADCENTER_CRASH_TRIALS", "3"))))
def test_a_worker_killed_mid_run_sends_nothing_twice_and_loses_nobody(
    smtp_server, make_campaign, add_contacts, trial
):
    add_contacts(*(f"r{i}@example.test" for i in range(200)))
    add_contacts("x.user-unknown@example.test", "x.mailbox-full@example.test")

    figures = crash_trial(
        server=smtp_server,
        campaign=make_campaign(name=f"Crash {trial}"),
        rng=random.Random(trial),
        batch_size=BATCH,
    )

    assert figures.duplicates == 0
    assert figures.lost == 0
    assert figures.in_doubt == figures.in_flight_at_kill <= BATCH
    # Whatever the server accepted is recorded as sent or in doubt; nothing else.
    assert figures.accepted_not_recorded == 0
    assert (
        figures.sent + figures.soft_bounced + figures.bounced + figures.failed + (figures.in_doubt)
        == 202
    )
