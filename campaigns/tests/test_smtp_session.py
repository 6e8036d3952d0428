"""SmtpSession against a real aiosmtpd server, with and without PIPELINING advertised: the
same outcome and reply for every kind of answer, and the message arrives byte for byte (a line
that starts with a dot included)."""

from __future__ import annotations

import pytest

from campaigns.simulator import SimulatedInternet, SimulatorServer
from campaigns.smtp import SmtpSession
from leadcenter.factories import SendingAccountFactory

pytestmark = pytest.mark.django_db

BODY = (
    b"From: sales@leadcenter.test\r\nTo: someone\r\nSubject: dots\r\n\r\n"
    b"Line one\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\nend"
)


@pytest.fixture(params=[True, False], ids=["pipelining", "one command at a time"])
def server(request):
    with SimulatorServer(SimulatedInternet(pipelining=request.param)) as server:
        yield server


@pytest.fixture
def session(server):
    account = SendingAccountFactory(smtp_port=server.port, smtp_timeout=5)
    with SmtpSession(account) as session:
        yield session


def test_the_server_says_whether_it_pipelines(server, session):
    assert session.connection.has_extn("pipelining") == server.handler.pipelining


def test_outcomes_and_replies_are_the_same_either_way(server, session):
    accepted = session.send("bounce+1@leadcenter.test", "ada@example.test", BODY)
    unknown = session.send("bounce+2@leadcenter.test", "x.user-unknown@example.test", BODY)
    spam = session.send("bounce+3@leadcenter.test", "x.spam-block@example.test", BODY)
    after = session.send("bounce+4@leadcenter.test", "bob@example.test", BODY)

    assert (accepted.code, accepted.stage, accepted.accepted) == (250, "data", True)
    assert accepted.text.startswith("2.0.0 Ok: queued as SIM")
    assert (unknown.code, unknown.status, unknown.stage) == (550, "5.1.1", "rcpt")
    assert spam.code == 554 and spam.stage == "data"
    assert after.accepted  # the refusals left the session usable
    delivered = server.handler.delivered
    assert [d.rcpt_to for d in delivered] == [["ada@example.test"], ["bob@example.test"]]
    assert [d.mail_from for d in delivered] == [
        "bounce+1@leadcenter.test",
        "bounce+4@leadcenter.test",
    ]
    # As sent, with the line end DATA adds to a last line without one.
    assert delivered[0].data.replace(b"\r\n", b"\n") == (BODY + b"\r\n").replace(b"\r\n", b"\n")


def test_a_dropped_connection_mid_data_is_no_answer_and_the_next_send_reconnects(session):
    dropped = session.send("bounce@leadcenter.test", "x.drop-in-data@example.test", BODY)
    again = session.send("bounce@leadcenter.test", "ada@example.test", BODY)

    assert dropped.code in (None, 421) and not dropped.accepted
    assert again.accepted


@pytest.mark.parametrize(
    "ahead", ["nothing", "mail and rcpt", "mail, rcpt and data"], ids=lambda a: f"{a} ahead"
)
def test_a_streamed_batch_gets_each_reply_under_its_own_key(server, session, ahead):
    # submit() as the sender uses it: each message's reply comes back from completed() with
    # the key it went with, whatever came before it on the connection. With the next message's
    # commands sent ahead behind each content, whatever that message's fate.
    batch = [
        ("first", "ada@example.test"),
        ("unknown", "x.user-unknown@example.test"),
        ("spam", "x.spam-block@example.test"),
        ("full", "x.mailbox-full@example.test"),
        ("after-refusals", "bob@example.test"),
        ("dropped", "x.drop-in-data@example.test"),
        ("after-drop", "cy@example.test"),
    ]
    replies = []
    for at, (key, address) in enumerate(batch):
        following = batch[at + 1] if at + 1 < len(batch) else None
        session.submit(
            f"bounce+{key}@leadcenter.test",
            address,
            BODY,
            key,
            (f"bounce+{following[0]}@leadcenter.test", following[1])
            if following and ahead != "nothing"
            else None,
            next_ready=following is not None and ahead == "mail, rcpt and data",
        )
        replies += session.completed()
    session.flush()
    replies += session.completed()

    assert [key for key, _ in replies] == [key for key, _ in batch]
    by_key = dict(replies)
    assert by_key["first"].accepted and by_key["after-refusals"].accepted
    assert (by_key["unknown"].code, by_key["unknown"].stage) == (550, "rcpt")
    assert (by_key["spam"].code, by_key["spam"].stage) == (554, "data")
    assert (by_key["full"].code, by_key["full"].status) == (452, "4.2.2")
    assert by_key["dropped"].code in (None, 421) and not by_key["dropped"].accepted
    # The server went away with the message before it: this one went on a new connection.
    assert by_key["after-drop"].accepted
    delivered = server.handler.delivered
    assert [d.mail_from for d in delivered] == [
        "bounce+first@leadcenter.test",
        "bounce+after-refusals@leadcenter.test",
        "bounce+after-drop@leadcenter.test",
    ]
    assert all(
        d.data.replace(b"\r\n", b"\n") == (BODY + b"\r\n").replace(b"\r\n", b"\n")
        for d in delivered
    )


class _SlowToAccept(SimulatedInternet):
    """Takes half a second over each message before it answers the end of its data."""

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        await asyncio.sleep(0.5)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one command at a time"])
def test_with_pipelining_submit_returns_while_the_server_reads_the_message(pipelining):
    import time

    with SimulatorServer(_SlowToAccept(pipelining=pipelining)) as server:
        account = SendingAccountFactory(smtp_port=server.port, smtp_timeout=5)
        with SmtpSession(account) as session:
            started = time.monotonic()
            session.submit("bounce@leadcenter.test", "ada@example.test", BODY, "ada")
            returned_after = time.monotonic() - started
            waiting = session.completed()
            session.flush()
            [(key, reply)] = waiting + session.completed()

    assert key == "ada" and reply.accepted
    if pipelining:
        # The message went; its reply is read with the next message's, or by flush().
        assert waiting == [] and returned_after < 0.4
    else:
        assert waiting != [] and returned_after >= 0.5


def test_a_next_message_that_does_not_come_after_its_data_went_is_never_delivered(server, session):
    # Its MAIL, RCPT and DATA went with the content before it, and then it is not sent (the
    # worker stops): the connection closes before its content, so the server delivers
    # nothing of it, and the session goes on over a new connection.
    session.submit(
        "bounce+1@leadcenter.test",
        "ada@example.test",
        BODY,
        "ada",
        ("bounce+2@leadcenter.test", "bob@example.test"),
        next_ready=True,
    )
    session.flush()
    [(key, reply)] = session.completed()
    after = session.send("bounce+3@leadcenter.test", "cy@example.test", BODY)

    assert key == "ada" and reply.accepted and after.accepted
    delivered = server.handler.delivered
    assert [d.rcpt_to for d in delivered] == [["ada@example.test"], ["cy@example.test"]]
