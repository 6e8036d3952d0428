"""`manage.py process_bounces` over files, a Maildir, an mbox and an account's POP3 or IMAP
mailbox (tiny fake servers on 127.0.0.1, below), and the scheduled `bounces_poll`."""

from __future__ import annotations

import io
import mailbox
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.urls import reverse
from django_q.models import Schedule

from campaigns.models import Message
from campaigns.simulator import SimulatedInternet, SimulatorServer
from contacts.models import Contact, Suppression
from leadcenter.factories import ContactFactory, SendingAccountFactory
from tracking import bounces
from tracking.apps import ensure_schedules
from tracking.models import BounceMailbox, TrackingEvent
from tracking.tasks import bounces_poll

pytestmark = pytest.mark.django_db

S = Message.Status
ADA = "ada@example.net"
PASSWORD = "s3cret"


@pytest.fixture
def bounce_maildir(tmp_path) -> Path:
    path = tmp_path / "bounces"
    # Made beforehand: the simulator's own mkdir() before Maildir(create=True) leaves a new
    # directory without its new/, cur/ and tmp/ (see the report on campaigns/simulator.py).
    mailbox.Maildir(path, create=True)
    return path


@pytest.fixture
def smtp_server(bounce_maildir):
    """The simulated internet, writing a DSN into a Maildir for each "bounce-later" address."""
    with SimulatorServer(SimulatedInternet(bounce_maildir=bounce_maildir)) as server:
        yield server


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("process_bounces", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def maildir_with(path: Path, *raws: bytes) -> Path:
    box = mailbox.Maildir(path, create=True)
    for raw in raws:
        box.add(raw)
    return path


# --- files, Maildir, mbox --------------------------------------------------------------------


def test_a_bounce_accepted_then_returned_by_the_recipients_server_bounces_the_message(
    send, bounce_maildir
):
    [message] = send("bounce-later@example.net")
    assert message.status == S.SENT  # the server said 250, then wrote a DSN
    assert len(list((bounce_maildir / "new").iterdir())) == 1

    output = run("--maildir", str(bounce_maildir))

    assert "Processed 1 messages: bounced 1 hard" in output
    message.refresh_from_db()
    assert message.status == S.BOUNCED
    contact = Contact.objects.get(email="bounce-later@example.net")
    assert contact.email_status == Contact.EmailStatus.INVALID
    assert Suppression.objects.filter(
        email="bounce-later@example.net", reason="hard_bounce"
    ).exists()


def test_the_sent_emails_list_shows_the_bounce_message_s_reply_of_an_email_returned_later(
    send, bounce_maildir, support_client
):
    send("bounce-later@example.net", "kept@example.net")
    run("--maildir", str(bounce_maildir))

    page = support_client.get(reverse("admin:campaigns_message_changelist")).content.decode()

    rows = {
        address: row
        for row in page.split("<tr")
        for address in ("bounce-later@example.net", "kept@example.net")
        if address in row
    }
    # The refusal that explains "Bounced", where it came from; not the 250 of the sending.
    assert "Bounce message: 550 5.1.1 &lt;bounce-later@" in rows["bounce-later@example.net"]
    assert "250 " not in rows["bounce-later@example.net"]
    assert "250 " in rows["kept@example.net"]
    assert "Bounce message" not in rows["kept@example.net"]


def test_a_returned_email_with_non_ascii_headers_is_reported_with_its_headers_as_sent(
    send, bounce_maildir
):
    # The DSN quotes the original headers as they went over the wire (RFC 2047 words), as a
    # recipient's server does: decoded, a name such as Jürgen could not be written at all.
    ContactFactory(email="bounce-later@example.net", first_name="Jürgen", last_name="Müller")
    [message] = send("bounce-later@example.net")
    [dsn] = (bounce_maildir / "new").iterdir()
    quoted = dsn.read_bytes().split(b"text/rfc822-headers", 1)[1]
    assert quoted.isascii()
    assert b"Subject: =?utf-8?" in quoted
    assert message.message_id.encode() in quoted

    assert "bounced 1 hard" in run("--maildir", str(bounce_maildir))
    message.refresh_from_db()
    assert message.status == S.BOUNCED


def test_maildir_messages_are_moved_to_cur_as_seen_and_not_read_again(send, bounce_maildir):
    send("bounce-later@example.net")

    run("--maildir", str(bounce_maildir))
    second = run("--maildir", str(bounce_maildir))

    assert not list((bounce_maildir / "new").iterdir())
    [done] = list((bounce_maildir / "cur").iterdir())
    assert done.name.endswith(":2,S")
    assert "Processed 0 messages" in second


def test_maildir_messages_can_be_deleted_once_recorded(send, bounce_maildir):
    send("bounce-later@example.net")

    run("--maildir", str(bounce_maildir), "--delete")

    assert not list((bounce_maildir / "new").iterdir())
    assert not list((bounce_maildir / "cur").iterdir())
    assert TrackingEvent.objects.filter(type="bounced", source="dsn").count() == 1


def test_a_message_that_could_not_be_recorded_stays_in_new(send, bounce_maildir, monkeypatch):
    send("bounce-later@example.net")

    def broken(event):
        raise RuntimeError("database went away")

    monkeypatch.setattr("tracking.services.event_record", broken)
    with pytest.raises(RuntimeError):
        run("--maildir", str(bounce_maildir))
    assert len(list((bounce_maildir / "new").iterdir())) == 1

    monkeypatch.undo()
    assert "bounced 1 hard" in run("--maildir", str(bounce_maildir))
    assert not list((bounce_maildir / "new").iterdir())


def test_a_maildir_message_already_seen_is_skipped(tmp_path, send, bounce_for):
    [message] = send(ADA)
    box = maildir_with(tmp_path / "box", bounce_for("postfix_user_unknown.eml", message))
    [name] = [p.name for p in (box / "new").iterdir()]
    (box / "new" / name).rename(box / "cur" / f"{name}:2,S")

    assert "Processed 0 messages" in run("--maildir", str(box))


def test_files_are_read_one_message_each_and_twice_record_nothing_new(tmp_path, send, bounce_for):
    ada, bob = send(ADA, "bob@example.net")
    first = tmp_path / "1.eml"
    first.write_bytes(bounce_for("gmail_address_not_found.eml", ada))
    second = tmp_path / "2.eml"
    second.write_bytes(bounce_for("sendmail_mailbox_full.eml", bob))

    output = run(str(first), str(second))
    again = run(str(first), str(second))

    assert "Processed 2 messages: bounced 1 hard, 1 soft" in output
    assert "duplicates 2" in again
    ada.refresh_from_db()
    bob.refresh_from_db()
    assert (ada.status, bob.status) == (S.BOUNCED, S.FAILED)


def test_a_message_can_come_from_standard_input(monkeypatch, send, bounce_for):
    [message] = send(ADA)
    raw = bounce_for("exim_failed.eml", message)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))

    assert "bounced 1 hard" in run("-")


def test_an_mbox_is_read_whole_and_can_be_emptied(tmp_path, send, bounce_for):
    ada, bob = send(ADA, "bob@example.net")
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path)
    box.add(bounce_for("qmail_failed.eml", ada))
    box.add(bounce_for("arf_abuse_yahoo.eml", bob))
    box.close()

    output = run("--mbox", str(path))
    again = run("--mbox", str(path), "--delete")

    assert "Processed 2 messages: bounced 1 hard" in output
    assert "complaints 1" in output
    assert "duplicates 2" in again
    assert len(mailbox.mbox(path)) == 0


def test_garbage_in_a_maildir_is_stored_without_stopping_the_rest(tmp_path, send, bounce_for):
    [message] = send(ADA)
    box = maildir_with(
        tmp_path / "box",
        b"\x00\xff garbage \r\n\r\n--",
        bounce_for("garbage_truncated_mime.eml"),
        bounce_for("postfix_user_unknown.eml", message),
    )

    output = run("--maildir", str(box))

    assert "Processed 3 messages: bounced 1 hard" in output
    assert "unknown 2" in output
    assert TrackingEvent.objects.filter(type="unknown", message__isnull=True).count() == 2


def test_it_needs_something_to_read():
    with pytest.raises(CommandError, match="--maildir"):
        run()


def test_an_account_without_a_bounce_mailbox_is_refused(account):
    with pytest.raises(CommandError, match="No bounce mailbox"):
        run("--account", account.name)


# --- POP3 and IMAP mailboxes ---------------------------------------------------------------------


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def serving(handler: type[socketserver.BaseRequestHandler], store) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), handler)
    server.store = store
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class Store:
    """The fake servers' mailbox: uid -> message bytes, and the flags each carries."""

    def __init__(self, *raws: bytes, username: str = "bounces", password: str = PASSWORD) -> None:
        self.messages = {uid: raw for uid, raw in enumerate(raws, start=1)}
        self.flags: dict[int, set[str]] = {uid: set() for uid in self.messages}
        self.username, self.password = username, password
        self.lock = threading.Lock()


class Pop3Handler(socketserver.StreamRequestHandler):
    """Just enough POP3 (RFC 1939) for poplib: USER PASS STAT LIST RETR DELE RSET NOOP QUIT."""

    def send(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")

    def handle(self) -> None:
        store: Store = self.server.store
        numbers = sorted(store.messages)  # message n is numbers[n - 1] for this session
        user, logged_in, marked = b"", False, set()
        self.send(b"+OK fake POP3 server ready")
        for line in self.rfile:
            command, _, arg = line.strip().partition(b" ")
            command = command.upper()
            if command == b"QUIT":
                with store.lock:
                    for uid in marked:
                        store.messages.pop(uid, None)
                self.send(b"+OK bye")
                return
            if command == b"USER":
                user = arg
                self.send(b"+OK")
            elif command == b"PASS":
                logged_in = (user, arg) == (store.username.encode(), store.password.encode())
                self.send(b"+OK logged in" if logged_in else b"-ERR [AUTH] invalid password")
            elif not logged_in:
                self.send(b"-ERR log in first")
            elif command == b"STAT":
                size = sum(len(store.messages[uid]) for uid in numbers)
                self.send(b"+OK %d %d" % (len(numbers), size))
            elif command == b"LIST":
                self.send(b"+OK")
                for n, uid in enumerate(numbers, start=1):
                    self.send(b"%d %d" % (n, len(store.messages[uid])))
                self.send(b".")
            elif command == b"RETR":
                raw = store.messages[numbers[int(arg) - 1]]
                self.send(b"+OK %d octets" % len(raw))
                for text in raw.split(b"\n"):
                    text = text.rstrip(b"\r")
                    self.send(b"." + text if text.startswith(b".") else text)
                self.send(b".")
            elif command == b"DELE":
                marked.add(numbers[int(arg) - 1])
                self.send(b"+OK marked")
            elif command == b"RSET":
                marked.clear()
                self.send(b"+OK")
            elif command == b"NOOP":
                self.send(b"+OK")
            else:
                self.send(b"-ERR unknown command")


class ImapHandler(socketserver.StreamRequestHandler):
    """Just enough IMAP4rev1 (RFC 3501) for imaplib: CAPABILITY LOGIN SELECT, UID SEARCH UNSEEN,
    UID FETCH (BODY.PEEK[]), UID STORE +FLAGS, EXPUNGE, LOGOUT."""

    def send(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")

    def handle(self) -> None:
        store: Store = self.server.store
        self.send(b"* OK fake IMAP4rev1 server ready")
        for line in self.rfile:
            tag, _, rest = line.strip().partition(b" ")
            command, _, args = rest.partition(b" ")
            command = command.upper()
            if command == b"UID":
                command, _, args = args.partition(b" ")
                command = b"UID " + command.upper()
            uids = sorted(store.messages)
            if command == b"CAPABILITY":
                self.send(b"* CAPABILITY IMAP4rev1")
            elif command == b"LOGIN":
                username, _, password = args.partition(b" ")
                if (username.strip(b'"'), password.strip(b'"')) != (
                    store.username.encode(),
                    store.password.encode(),
                ):
                    self.send(tag + b" NO [AUTHENTICATIONFAILED] invalid credentials")
                    continue
            elif command == b"SELECT":
                self.send(b"* %d EXISTS" % len(uids))
                self.send(b"* OK [UIDVALIDITY 1] UIDs valid")
                self.send(tag + b" OK [READ-WRITE] SELECT completed")
                continue
            elif command == b"UID SEARCH":
                found = [uid for uid in uids if "\\Seen" not in store.flags[uid]]
                self.send(b"* SEARCH" + b"".join(b" %d" % uid for uid in found))
            elif command == b"UID FETCH":
                uid = int(args.split()[0])
                if uid in store.messages:
                    raw = store.messages[uid]
                    seq = uids.index(uid) + 1
                    self.wfile.write(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, uid, len(raw)))
                    self.wfile.write(raw + b")\r\n")
            elif command == b"UID STORE":
                uid_text, _, flags = args.partition(b" ")
                uid = int(uid_text)
                with store.lock:
                    for flag in flags.split(b"(")[1].rstrip(b")").split():
                        store.flags[uid].add(flag.decode())
                self.send(b"* %d FETCH (UID %d)" % (uids.index(uid) + 1, uid))
            elif command == b"EXPUNGE":
                with store.lock:
                    for uid in [u for u in uids if "\\Deleted" in store.flags[u]]:
                        self.send(b"* %d EXPUNGE" % (sorted(store.messages).index(uid) + 1))
                        del store.messages[uid]
            elif command == b"LOGOUT":
                self.send(b"* BYE logging out")
                self.send(tag + b" OK LOGOUT completed")
                return
            else:
                self.send(tag + b" BAD unknown command")
                continue
            self.send(tag + b" OK completed")


def mailbox_for(account, server: _Server, protocol: str, **fields) -> BounceMailbox:
    return BounceMailbox.objects.create(
        account=account,
        protocol=protocol,
        host="127.0.0.1",
        port=server.server_address[1],
        username="bounces",
        password=PASSWORD,
        use_ssl=False,
        **fields,
    )


@pytest.mark.parametrize(("protocol", "handler"), [("pop3", Pop3Handler), ("imap", ImapHandler)])
def test_an_accounts_mailbox_is_read_and_emptied(send, bounce_for, account, protocol, handler):
    ada, bob = send(ADA, "bob@example.net")
    store = Store(
        bounce_for("postfix_user_unknown.eml", ada),
        bounce_for("postfix_delayed.eml", bob),
        b"not a bounce at all",
    )
    with serving(handler, store) as server:
        mailbox_for(account, server, protocol, delete_after=True)

        output = run("--account", "Sales")

    assert "Processed 3 messages: bounced 1 hard, 0 soft · deferred 1" in output
    assert "unknown 1" in output
    assert store.messages == {}
    ada.refresh_from_db()
    bob.refresh_from_db()
    assert (ada.status, bob.status) == (S.BOUNCED, S.SOFT_BOUNCED)
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.INVALID
    mailbox = BounceMailbox.objects.get()
    assert mailbox.last_polled_at is not None
    assert mailbox.last_error == ""


def test_imap_marks_messages_seen_and_skips_them_next_time(send, bounce_for, account):
    [message] = send(ADA)
    store = Store(bounce_for("exchange_recipient_not_found.eml", message))
    with serving(ImapHandler, store) as server:
        mailbox_for(account, server, "imap", delete_after=False)

        first = run("--account", "Sales")
        second = run("--account", "Sales")

    assert "bounced 1 hard" in first
    assert "Processed 0 messages" in second
    assert store.flags[1] == {"\\Seen"}
    assert len(store.messages) == 1


def test_pop3_without_deleting_reads_everything_again_and_records_nothing_new(
    send, bounce_for, account
):
    [message] = send(ADA)
    store = Store(bounce_for("yahoo_no_account.eml", message))
    with serving(Pop3Handler, store) as server:
        mailbox_for(account, server, "pop3", delete_after=False)

        run("--account", "Sales")
        second = run("--account", "Sales")

    assert "Processed 1 messages" in second
    assert "duplicates 1" in second
    assert len(store.messages) == 1
    assert TrackingEvent.objects.filter(type="bounced").count() == 1


def test_a_pop3_message_is_byte_stuffed_and_unstuffed_faithfully(send, bounce_for, account):
    [message] = send(ADA)
    raw = bounce_for("qmail_failed.eml", message).replace(
        b"Hi Ada,", b"Hi Ada,\n.\n..leading dots survive"
    )
    store = Store(raw)
    with serving(Pop3Handler, store) as server:
        mailbox_for(account, server, "pop3")
        run("--account", "Sales")

    event = TrackingEvent.objects.get(type="bounced")
    assert "\n.\n..leading dots survive" in event.raw.replace("\r\n", "\n")


@pytest.mark.parametrize(("protocol", "handler"), [("pop3", Pop3Handler), ("imap", ImapHandler)])
def test_a_wrong_password_is_kept_on_the_mailbox(account, protocol, handler):
    with serving(handler, Store(b"x", password="other")) as server:
        mailbox_for(account, server, protocol)

        out, err = io.StringIO(), io.StringIO()
        call_command("process_bounces", "--account", "Sales", stdout=out, stderr=err)

    mailbox = BounceMailbox.objects.get()
    assert mailbox.last_error
    assert mailbox.last_polled_at is not None
    assert "mailbox errors 1" in out.getvalue()
    assert mailbox.last_error in err.getvalue()


def test_an_untrusted_certificate_is_refused_before_the_password_is_sent(tmp_path, account):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    class TlsServer(_Server):
        def get_request(self):
            sock, address = super().get_request()
            return tls.wrap_socket(sock, server_side=True), address

    store = Store(b"x")
    server = TlsServer(("127.0.0.1", 0), Pop3Handler)
    server.store = store
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mailbox = mailbox_for(account, server, "pop3")
        BounceMailbox.objects.filter(pk=mailbox.pk).update(use_ssl=True)

        bounces_poll()
    finally:
        server.shutdown()
        server.server_close()

    mailbox.refresh_from_db()
    assert "CERTIFICATE_VERIFY_FAILED" in mailbox.last_error
    assert store.messages == {1: b"x"}


def test_the_scheduled_poll_reads_every_active_mailbox_and_survives_a_dead_one(
    send, bounce_for, account
):
    [message] = send(ADA)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    dead = BounceMailbox.objects.create(
        account=SendingAccountFactory(name="Support"),
        protocol="imap",
        host="127.0.0.1",
        port=dead_port,
        username="x",
        use_ssl=False,
    )
    BounceMailbox.objects.create(
        account=SendingAccountFactory(name="Paused"),
        protocol="imap",
        host="127.0.0.1",
        port=dead_port,
        username="x",
        use_ssl=False,
        is_active=False,
    )
    store = Store(bounce_for("gmail_address_not_found.eml", message))
    with serving(Pop3Handler, store) as server:
        mailbox_for(account, server, "pop3", delete_after=True)

        counts = bounces_poll()

    assert counts["bounced_hard"] == 1
    assert counts["errors"] == 1
    dead.refresh_from_db()
    assert "ConnectionRefusedError" in dead.last_error
    assert BounceMailbox.objects.get(account__name="Paused").last_polled_at is None
    message.refresh_from_db()
    assert message.status == S.BOUNCED


def test_the_poll_is_scheduled_every_five_minutes_once():
    config = apps.get_app_config("tracking")

    ensure_schedules(sender=config)
    ensure_schedules(sender=config)

    [schedule] = Schedule.objects.filter(name="leadcenter.bounces_poll")
    assert (schedule.schedule_type, schedule.minutes) == (Schedule.MINUTES, 5)
    assert schedule.func == "tracking.tasks.bounces_poll"
    assert schedule.repeats == -1


def test_the_default_ports_follow_the_protocol_and_ssl():
    assert BounceMailbox(protocol="imap", use_ssl=True).effective_port == 993
    assert BounceMailbox(protocol="imap", use_ssl=False).effective_port == 143
    assert BounceMailbox(protocol="pop3", use_ssl=True).effective_port == 995
    assert BounceMailbox(protocol="pop3", use_ssl=False, port=1110).effective_port == 1110


def test_an_imap_folder_with_spaces_is_quoted():
    assert bounces._imap_quote("INBOX") == "INBOX"
    assert bounces._imap_quote("Bounce Mail") == '"Bounce Mail"'
