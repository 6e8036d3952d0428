"""The demo's simulated internet: an SMTP server on 127.0.0.1 that answers by address.

The answer for a recipient is decided by a keyword in its address (see `RULES`), so a demo or a
test can ask for exactly the outcome it wants, and, with `spread` on, by a stable hash of the
address for everything else, so the demo's realistic addresses give a realistic mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import mailbox
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.utils import formatdate, make_msgid
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


@dataclass(frozen=True)
class Rule:
    name: str
    stage: str  # "rcpt", "data", "accept" or "bounce_later"
    reply: str = ""
    close: bool = False  # drop the connection after replying, as real servers do on 421
    delay: float = 0.0  # seconds to wait before answering (past the client's time-out)


ACCEPT = Rule("accepted", "accept")
RULES: dict[str, Rule] = {
    "user-unknown": Rule(
        "user unknown",
        "rcpt",
        "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
    ),
    "no-domain": Rule(
        "domain not found",
        "rcpt",
        "550 5.1.2 <{rcpt}>: Recipient address rejected: Domain not found",
    ),
    "mailbox-full": Rule(
        "mailbox full", "rcpt", "452 4.2.2 <{rcpt}>: Mailbox full: user is over quota"
    ),
    "spam-block": Rule(
        "blocked as spam",
        "data",
        "554 5.7.1 Message rejected: this message looks like spam (blocklisted content)",
    ),
    "no-answer": Rule(
        "no answer", "rcpt", "421 4.4.2 mx.simulated.example Error: timeout exceeded", close=True
    ),
    "slow-server": Rule("slow reply", "rcpt", "250 2.1.5 Ok", delay=60.0),
    "drop-in-data": Rule("connection dropped during DATA", "data_drop"),
    "bounce-later": Rule("accepted then bounced", "bounce_later"),
}
# With spread on, addresses without a keyword get these outcomes in these shares (per mille).
SPREAD: list[tuple[int, str]] = [
    (25, "user-unknown"),
    (8, "no-domain"),
    (15, "mailbox-full"),
    (10, "spam-block"),
    (7, "no-answer"),
    (15, "bounce-later"),
]


def rule_for(address: str, *, spread: bool = False) -> Rule:
    lowered = address.lower()
    for keyword, rule in RULES.items():
        if keyword in lowered:
            return rule
    if spread:
        bucket = int(hashlib.sha256(lowered.encode()).hexdigest()[:8], 16) % 1000
        for share, keyword in SPREAD:
            if bucket < share:
                return RULES[keyword]
            bucket -= share
    return ACCEPT


@dataclass
class Delivery:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    reply: str


class SimulatedInternet:
    """aiosmtpd handler. Keeps what it accepted (for tests) and writes DSNs for late bounces."""

    def __init__(
        self,
        *,
        spread: bool = False,
        bounce_maildir: str | Path | None = None,
        keep: bool = True,
        slow_delay: float | None = None,
        pipelining: bool = True,
    ) -> None:
        self.spread = spread
        self.pipelining = pipelining
        self.bounce_maildir = Path(bounce_maildir) if bounce_maildir else None
        self.keep = keep
        self.slow_delay = slow_delay
        self.delivered: list[Delivery] = []
        self.refused: list[tuple[str, str]] = []
        self.accepted_count = 0
        self._lock = threading.Lock()
        self._queue_id = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        """Advertise PIPELINING (RFC 2920), as the servers of the real internet (Postfix,
        Exim, Gmail, Exchange) do: aiosmtpd reads pipelined commands one line at a time
        already, it only does not say so."""
        session.host_name = hostname
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rule = rule_for(address, spread=self.spread)
        if rule.delay:
            await asyncio.sleep(self.slow_delay if self.slow_delay is not None else rule.delay)
        if rule.stage == "rcpt" and not rule.reply.startswith("250"):
            reply = rule.reply.format(rcpt=address)
            with self._lock:
                self.refused.append((address, reply))
            if rule.close:
                asyncio.get_running_loop().call_soon(server.transport.close)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        rules = [rule_for(rcpt, spread=self.spread) for rcpt in envelope.rcpt_tos]
        if any(r.stage == "data_drop" for r in rules):
            # The message arrived but the server goes away before it answers: the client
            # cannot know whether it was taken.
            server.transport.close()
            return "421 4.4.2 connection dropped"
        spam = next((r for r in rules if r.stage == "data"), None)
        if spam:
            with self._lock:
                self.refused.extend((rcpt, spam.reply) for rcpt in envelope.rcpt_tos)
            return spam.reply
        with self._lock:
            self._queue_id += 1
            reply = f"250 2.0.0 Ok: queued as SIM{self._queue_id:08X}"
            self.accepted_count += len(envelope.rcpt_tos)
            if self.keep:
                self.delivered.append(
                    Delivery(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, reply)
                )
        for rcpt, rule in zip(envelope.rcpt_tos, rules, strict=True):
            if rule.stage == "bounce_later" and self.bounce_maildir:
                self._write_dsn(envelope.mail_from, rcpt, envelope.content)
        return reply

    def _write_dsn(self, return_path: str, rcpt: str, original: bytes) -> None:
        """An RFC 3464 delivery status notification, as the recipient's server would send."""
        dsn = build_dsn(
            return_path=return_path,
            recipient=rcpt,
            status="5.1.1",
            diagnostic=f"smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
            original=original,
        )
        # Maildir(create=True) makes new/, cur/ and tmp/ only when the folder is missing.
        for sub in ("new", "cur", "tmp"):
            (self.bounce_maildir / sub).mkdir(parents=True, exist_ok=True)
        box = mailbox.Maildir(self.bounce_maildir, create=False)
        box.add(dsn.as_bytes())

    def received_by(self, address: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.delivered if address in d.rcpt_to]


def build_dsn(
    *,
    return_path: str,
    recipient: str,
    status: str,
    diagnostic: str,
    original: bytes,
    reporting_mta: str = "mx.simulated.example",
) -> EmailMessage:
    dsn = EmailMessage()
    dsn["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    dsn["To"] = return_path or "postmaster@localhost"
    dsn["Subject"] = "Undelivered Mail Returned to Sender"
    dsn["Date"] = formatdate(localtime=False)
    dsn["Message-ID"] = make_msgid(domain=reporting_mta)
    dsn["Auto-Submitted"] = "auto-replied"
    dsn.set_content(
        f"This is the mail system at host {reporting_mta}.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n\n"
        f"<{recipient}>: {diagnostic}\n"
    )
    dsn.make_mixed()
    dsn.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = diagnostic
    report = MIMEBase("message", "delivery-status")
    report.set_payload([per_message, per_recipient])
    dsn.attach(report)
    headers_part = MIMEBase("text", "rfc822-headers")
    # The original's header block as it arrived, encoded words and all, as a server quotes it;
    # bytes that are not ASCII go back out as they came (surrogateescape).
    head = original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    headers_part.set_payload(head.decode("ascii", "surrogateescape") + "\n")
    dsn.attach(headers_part)
    return dsn


class _Smtp(SMTP):
    """aiosmtpd's server, answering pipelined commands as Postfix and Exim do: a reply that says
    "go on" (250) waits while the next command is already in the input, and goes with the
    replies after it in one write, before the server would wait for input (RFC 2920 3.2
    lets a server buffer the replies of a group, as long as it flushes before it reads and
    would wait). A client that waits for each reply, as smtplib does, gets each at once, as
    before; so does any other reply (a refusal, a 421 before the connection closes)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[bytes] = []

    async def push(self, status) -> None:
        response = (
            status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
            if isinstance(status, str)
            else status
        )
        self._held.append(response + b"\r\n")
        if response.startswith(b"250") and b"\n" in self._reader._buffer:
            return  # the next command is here: its reply goes with this one
        replies, self._held = b"".join(self._held), []
        self._writer.write(replies)
        await self._writer.drain()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _Smtp(self.handler, **self.SMTP_kwargs)


class SimulatorServer:
    """Runs the simulator in a background thread: `with SimulatorServer() as sim: sim.port`."""

    def __init__(
        self, handler: SimulatedInternet | None = None, port: int = 0, **smtp_options
    ) -> None:
        """`smtp_options` go to aiosmtpd's SMTP server (e.g. an `authenticator`)."""
        self.handler = handler or SimulatedInternet()
        self.port = port or _free_port()
        self.controller = _Controller(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10, **smtp_options
        )

    def __enter__(self) -> SimulatorServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_forever(
    *, port: int, spread: bool, bounce_maildir: str | None, pipelining: bool = True
) -> None:
    handler = SimulatedInternet(
        spread=spread, bounce_maildir=bounce_maildir, keep=False, pipelining=pipelining
    )
    with SimulatorServer(handler, port=port):
        while True:
            time.sleep(3600)


__all__ = ["RULES", "Delivery", "Rule", "SimulatedInternet", "SimulatorServer", "build_dsn"]
