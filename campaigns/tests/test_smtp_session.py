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
