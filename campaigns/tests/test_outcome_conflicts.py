"""A deadlock with another writer while the sender records what the server answered (accepted,
or refused): the record is tried again, so mail that left us is `sent` or `bounced`, not left in
doubt with the rest of its batch. PostgreSQL only (it is where writers deadlock; SQLite has one
writer at a time)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from campaigns.models import Message, Recipient
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from leadcenter.testing import database_url
from tracking.models import TrackingEvent

S = Message.Status


class OtherWriter(threading.Thread):
    """Locks the recipient's row, waits until the sender is blocked on it while holding the
    message's row, then asks for the message's row: a deadlock, which PostgreSQL breaks by
    aborting the one that waited first, the sender."""

    def __init__(self, recipient_id: int, message_id: int) -> None:
        super().__init__(daemon=True)
        self.recipient_id, self.message_id = recipient_id, message_id
        self.locked = threading.Event()
        self.saw_sender_wait = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                psycopg.connect(database_url()) as conn,
                psycopg.connect(database_url(), autocommit=True) as spy,
            ):
                conn.execute(
                    "UPDATE campaigns_recipient SET last_action_at = now() WHERE id = %s",
                    [self.recipient_id],
                )
                self.locked.set()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not self.saw_sender_wait:
                    # The sender, blocked on the recipient's row (its own UPDATE of it, or a
                    # trigger's, for a rejection).
                    self.saw_sender_wait = bool(
                        spy.execute(
                            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND datname = current_database() AND pid <> %s",
                            [conn.info.backend_pid],
                        ).fetchone()
                    )
                    time.sleep(0.02)
                conn.execute(
                    "UPDATE campaigns_message SET open_count = open_count WHERE id = %s",
                    [self.message_id],
                )
                conn.commit()
        except BaseException as exc:  # shown by the test
            self.error = exc
            self.locked.set()


@pytest.mark.parametrize(
    ("address", "status", "event", "recipient_status", "delivered"),
    [
        ("ada@example.test", S.SENT, "sent", Recipient.Status.SENT, 1),
        ("x.user-unknown@example.test", S.BOUNCED, "bounced", Recipient.Status.FAILED, 0),
    ],
    ids=["accepted", "refused"],
)
@pytest.mark.django_db(transaction=True)
def test_a_deadlock_while_recording_a_reply_is_tried_again(
    smtp_server, make_campaign, add_contacts, address, status, event, recipient_status, delivered
):
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL deadlock")
    add_contacts(address)
    run_prepare(run=campaign_launch(campaign=make_campaign(), enqueue=False))
    message = Message.objects.get()
    other = OtherWriter(message.recipient_id, message.pk)
    other.start()
    assert other.locked.wait(10)

    dispatch_due()
    other.join(30)

    assert other.error is None, other.error
    assert other.saw_sender_wait, "the sender never waited on the recipient's row"
    message.refresh_from_db()
    assert message.status == status
    assert Recipient.objects.get().status == recipient_status
    assert TrackingEvent.objects.filter(message=message, type=event).count() == 1
    assert len(smtp_server.handler.delivered) == delivered


@pytest.mark.parametrize(
    ("address", "status", "event", "writer"),
    [
        ("ada@example.test", S.SENT, "sent", "messages_record_accepted"),
        ("x.user-unknown@example.test", S.BOUNCED, "bounced", "message_reject"),
    ],
    ids=["accepted", "refused"],
)
@pytest.mark.django_db(transaction=True)
def test_a_lost_database_connection_while_recording_a_reply_is_tried_again(
    smtp_server, make_campaign, add_contacts, monkeypatch, address, status, event, writer
):
    # The database restarts (here: our backend is terminated, as in a failover) between the
    # server's answer and its record: the record goes again on a new connection, once.
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL backend terminated")
    from campaigns import services

    add_contacts(address)
    run_prepare(run=campaign_launch(campaign=make_campaign(), enqueue=False))
    real = getattr(services, writer)
    terminated = []

    def terminate_then_write(*args, **kwargs):
        if not terminated:
            with psycopg.connect(database_url(), autocommit=True) as other:
                pid = connection.connection.info.backend_pid
                other.execute("SELECT pg_terminate_backend(%s)", [pid])
                terminated.append(pid)
            time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(services, writer, terminate_then_write)

    dispatch_due()

    assert terminated
    message = Message.objects.get()
    assert message.status == status
    assert TrackingEvent.objects.filter(message=message, type=event).count() == 1
