"""The simulated internet's SMTP server, spoken to over a plain socket: it answers a group of
pipelined commands as Postfix does, in one write once it has read the whole group, and never
holds a reply back while it waits for input."""

from __future__ import annotations

import socket

import pytest

from campaigns.simulator import SimulatedInternet, SimulatorServer


@pytest.fixture
def client():
    # The slow server's answers to RCPT take 0.3 s.
    with SimulatorServer(SimulatedInternet(keep=False, slow_delay=0.3)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"220 ")
            sock.sendall(b"EHLO client.test\r\n")
            while not (line := reader.readline()).startswith(b"250 "):
                assert line.startswith(b"250-")
            yield sock


def _replies(data: bytes) -> list[bytes]:
    return [line.split(b" ", 1)[0] for line in data.split(b"\r\n") if line]


def test_the_replies_to_a_pipelined_group_come_in_one_read(client):
    # MAIL is answered at once, RCPT 0.3 s later: the MAIL reply waits for the others.
    client.sendall(
        b"MAIL FROM:<a@leadcenter.test>\r\nRCPT TO:<x.slow-server@example.test>\r\nDATA\r\n"
    )
    assert _replies(client.recv(65536)) == [b"250", b"250", b"354"]

    # The message's reply, with the next group's, again in one write.
    client.sendall(
        b"Subject: one\r\n\r\nbody\r\n.\r\n"
        b"MAIL FROM:<a@leadcenter.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
    )
    assert _replies(client.recv(65536)) == [b"250", b"250", b"250", b"354"]


def test_a_reply_is_not_held_when_no_command_follows_it(client):
    client.sendall(b"MAIL FROM:<a@leadcenter.test>\r\nRCPT TO:<b@example.test>\r\n")
    data = b""
    while data.count(b"\r\n") < 2:
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    assert _replies(data) == [b"250", b"250"]


def test_a_refusal_in_a_group_goes_with_the_replies_before_it(client):
    client.sendall(
        b"MAIL FROM:<a@leadcenter.test>\r\nRCPT TO:<x.user-unknown@example.test>\r\n"
        b"RCPT TO:<b@example.test>\r\nDATA\r\n"
    )
    data = b""
    while data.count(b"\r\n") < 4:
        data += client.recv(65536)
    assert _replies(data) == [b"250", b"550", b"250", b"354"]
