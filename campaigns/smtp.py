"""One SMTP connection per account and batch, one SMTP transaction per recipient.

Django's SMTP backend keeps no per-recipient reply; this keeps the code, enhanced status and
text of each, and tells our own side's failures (cannot connect, login refused, sender
refused) from the recipient's (a 4xx or 5xx reply, no answer from the server).
"""

from __future__ import annotations

import re
import smtplib
import ssl
from dataclasses import dataclass

from campaigns.models import SendingAccount
from tracking.classification import parse_smtp_reply


class AccountError(Exception):
    """Our side failed: the relay cannot be reached, refuses our login or our sender."""


@dataclass(frozen=True)
class Reply:
    code: int | None
    status: str  # enhanced status code, e.g. "5.1.1"
    text: str
    stage: str  # "data" for an accepted message; "rcpt", "data", "mail" or "connection"
    esp_message_id: str = ""  # the ESP's id, when sent through an ESP's API

    @property
    def accepted(self) -> bool:
        return self.code == 250 and self.stage == "data"

    @property
    def no_answer(self) -> bool:
        return self.code is None


def _reply(code: int | None, raw: bytes | str, stage: str) -> Reply:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    _code, status, _rest = parse_smtp_reply(f"{code} {text}" if code else text)
    return Reply(code=code, status=status, text=text, stage=stage)


class _Session:
    """What both sessions share: the replies of submitted messages, each under its key."""

    def __init__(self, account: SendingAccount) -> None:
        self.account = account
        self._completed: list[tuple[object, Reply]] = []

    def completed(self) -> list[tuple[object, Reply]]:
        """The replies read since the last call, each with its message's key, in order."""
        done, self._completed = self._completed, []
        return done


class SmtpSession(_Session):
    """One connection to the account's server; one SMTP transaction per recipient.

    `send()` is one transaction, its reply returned. `submit()` streams a batch: with PIPELINING
    (RFC 2920) a message's content goes with the next message's MAIL and RCPT behind it ("the
    actual transfer of message content is explicitly allowed to be the first command in a
    group"), and with its DATA too when the caller has already composed it (`next_ready`), so
    that a message costs one round trip and one write: its content, then the replies to it and
    to the next one's commands. The replies are read in order, and the caller composes the
    message after next while the server reads. A message's content is only sent after the
    server answered 354 to its DATA, which it does only after the previous message's reply:
    nothing goes out that we did not see the previous outcome of. A next message that does not
    come is taken back with RSET, or, when its DATA went, by closing the connection before its
    content: a transaction the client never ends with its final dot is not delivered (RFC 5321
    3.3, 4.1.1.4). The replies come back, each with the key it was submitted with, from
    `completed()`; `flush()` reads the last one."""

    def __init__(self, account: SendingAccount) -> None:
        super().__init__(account)
        self.connection: smtplib.SMTP | None = None
        self._pending: object = _NOTHING  # key of a message whose content went, reply unread
        self._ahead: tuple[str, str] | None = None  # MAIL and RCPT sent ahead, replies unread
        self._data_ahead = False  # ... and DATA behind them

    def __enter__(self) -> SmtpSession:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        account = self.account
        try:
            if account.smtp_security == SendingAccount.Security.SSL:
                connection: smtplib.SMTP = smtplib.SMTP_SSL(
                    account.smtp_host,
                    account.smtp_port,
                    timeout=account.smtp_timeout,
                    context=ssl.create_default_context(),
                )
            else:
                connection = smtplib.SMTP(
                    account.smtp_host, account.smtp_port, timeout=account.smtp_timeout
                )
            connection.ehlo()
            if account.smtp_security == SendingAccount.Security.STARTTLS:
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if account.smtp_username:
                connection.login(account.smtp_username, account.smtp_password)
        except smtplib.SMTPAuthenticationError as exc:
            raise AccountError(f"login refused by {account.smtp_host}: {_text(exc)}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise AccountError(
                f"cannot talk to {account.smtp_host}:{account.smtp_port}: {_text(exc)}"
            ) from exc
        self.connection = connection

    def close(self) -> None:
        if self.connection is not None:
            self.flush()
        if self.connection is not None:
            try:
                self.connection.quit()
            except (OSError, smtplib.SMTPException):
                self.connection.close()
            self.connection = None

    def send(self, envelope_from: str, recipient: str, data: bytes) -> Reply:
        """One SMTP transaction. Raises AccountError when the server refuses our sender."""
        key = object()
        self.submit(envelope_from, recipient, data, key)
        self.flush()
        return dict(self.completed())[key]

    def flush(self) -> None:
        """Read the reply to the message still waiting for one; end the transaction begun
        ahead for a next message that did not come (RSET)."""
        self._read_pending()
        if self._ahead is not None:
            self._abandon_ahead()

    def submit(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        key: object,
        next_envelope: tuple[str, str] | None = None,
        next_ready: bool = False,
    ) -> None:
        """Send one message; its reply (and the previous message's) come from completed().
        `next_envelope`: the (sender, recipient) of the message likely to come next, whose
        MAIL and RCPT then go with this one's content; `next_ready`: that message is composed
        and will be submitted next, so its DATA goes too. Raises AccountError when the server
        refuses our sender or a new connection cannot be had; the replies read before that
        are in completed() all the same."""
        if self.connection is None:
            self.open()
        pipelined = self._pipelining(envelope_from, recipient)
        went_ahead = pipelined and self._ahead == (envelope_from, recipient)
        if not pipelined or (self._ahead is not None and not went_ahead):
            # Nothing of this one goes with the previous message: read that one's reply, and
            # take back a transaction begun ahead for another message.
            self.flush()
            if self.connection is None:
                self.open()
        if not pipelined:
            connection = self.connection
            reply = self._guarded(
                lambda: self._one_command_at_a_time(connection, envelope_from, recipient, data)
            )
            self._completed.append((key, reply))
            return
        behind_previous = self._pending is not _NOTHING
        data_went = went_ahead and self._data_ahead
        self._ahead, self._data_ahead = None, False
        # Nothing to write when its MAIL, RCPT and DATA went with the previous content; DATA
        # alone when only its MAIL and RCPT did. The previous message's reply comes first: read
        # it even when the write failed, the server may have answered before closing.
        if data_went:
            written = True
        else:
            commands = b"" if went_ahead else _commands(envelope_from, recipient)
            written = self._write(commands + b"DATA\r\n")
        self._read_pending()
        if written and self.connection is not None:
            self._after_commands(envelope_from, data, key, next_envelope, next_ready)
            return
        self._drop()
        if behind_previous:
            # The connection ended with the previous message, before anything of this one
            # was taken: this one goes on a new connection.
            self.submit(envelope_from, recipient, data, key, next_envelope)
            return
        self._completed.append((key, _reply(None, "connection lost", "connection")))

    def _pipelining(self, envelope_from: str, recipient: str) -> bool:
        return bool(
            self.connection is not None
            and self.connection.has_extn("pipelining")
            and _DOT_ATOM.match(envelope_from)
            and _DOT_ATOM.match(recipient)
        )

    def _write(self, data: bytes) -> bool:
        """One write; False when the connection is gone."""
        try:
            self.connection.sock.sendall(data)
        except OSError:
            return False
        return True

    def _read_pending(self) -> None:
        if self._pending is not _NOTHING:
            key, self._pending = self._pending, _NOTHING
            self._completed.append((key, self._guarded(self._final_reply)))

    def _abandon_ahead(self) -> None:
        """RSET the transaction whose MAIL and RCPT went ahead: its message is not sent now
        (run paused, address dropped, template error) or goes otherwise. Nothing of it was
        delivered: its content never went. When its DATA went too, the server may be waiting
        for that content, where an RSET would be read as content: close the connection
        instead, which ends the transaction undelivered."""
        data_went, self._ahead, self._data_ahead = self._data_ahead, None, False
        if self.connection is None:
            return
        if data_went:
            self._drop()
            return
        if not self._write(b"RSET\r\n"):
            self._drop()
            return
        replies = self._guarded(lambda: [self.connection.getreply() for _ in range(3)])
        if isinstance(replies, Reply) or any(code == 421 for code, _ in replies):
            self._drop()

    def _after_commands(
        self,
        envelope_from: str,
        data: bytes,
        key: object,
        next_envelope: tuple[str, str] | None,
        next_ready: bool,
    ) -> None:
        connection = self.connection
        reply = self._guarded(
            lambda: self._pipelined(connection, envelope_from, data, next_envelope, next_ready)
        )
        if reply is None:
            self._pending = key
        else:
            self._completed.append((key, reply))

    def _guarded(self, step):
        """Run one step of the conversation; a connection that drops or times out ends it,
        and the message in hand gets a reply without a code (no answer)."""
        try:
            return step()
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            return _reply(None, f"connection dropped: {_text(exc)}", "connection")
        except TimeoutError as exc:
            self._drop()
            return _reply(None, f"timed out waiting for the server: {_text(exc)}", "connection")
        except OSError as exc:
            self._drop()
            return _reply(None, f"connection lost: {_text(exc)}", "connection")

    def _final_reply(self) -> Reply:
        if self.connection is None:
            raise smtplib.SMTPServerDisconnected("the connection closed before the reply")
        code, text = self.connection.getreply()
        # The transaction is over whatever the reply (RFC 5321 4.1.1.4): no RSET, which would
        # land behind the next message's commands. A 421 closes the connection.
        if code == 421:
            self._drop()
        return _reply(code, text, "data")

    def _one_command_at_a_time(
        self, connection: smtplib.SMTP, envelope_from: str, recipient: str, data: bytes
    ) -> Reply:
        code, text = _command(connection, "mail", "FROM:", envelope_from)
        if code == 421:
            # The server closes the connection after a 421 (RFC 5321 3.8): an RSET first
            # would fail on it and lose this reply.
            self._drop()
            return _reply(code, text, "mail")
        if code != 250:
            connection.rset()
            raise AccountError(f"sender {envelope_from} refused: {code} {_decode(text)}")
        code, text = _command(connection, "rcpt", "TO:", recipient)
        if code not in (250, 251):
            self._rset_unless_closing((code, text))
            return _reply(code, text, "rcpt")
        try:
            code, text = connection.data(data)
        except smtplib.SMTPDataError as exc:
            connection.rset()
            return _reply(exc.smtp_code, exc.smtp_error, "data")
        if code != 250:
            connection.rset()
        return _reply(code, text, "data")

    def _pipelined(
        self,
        connection: smtplib.SMTP,
        envelope_from: str,
        data: bytes,
        next_envelope: tuple[str, str] | None = None,
        next_ready: bool = False,
    ) -> Reply | None:
        """The replies to MAIL, RCPT and DATA (sent by submit()), read in order, then the
        message content when the server is ready for it, with the next message's MAIL and
        RCPT (and DATA, when `next_ready`) behind it: None then, its reply comes later. Each
        reply is read and kept."""
        mail = connection.getreply()
        if mail[0] == 421:  # the server closes now (RFC 5321 3.8): no more replies come
            self._drop()
            return _reply(*mail, "mail")
        rcpt = connection.getreply()
        if rcpt[0] == 421:
            self._drop()
            return _reply(*rcpt, "rcpt")
        start = connection.getreply()
        if start[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
            # A server that opens DATA for a failed transaction: end it empty.
            connection.send(b".\r\n")
            connection.getreply()
        if mail[0] != 250:
            self._rset_unless_closing(start)
            raise AccountError(f"sender {envelope_from} refused: {mail[0]} {_decode(mail[1])}")
        if rcpt[0] not in (250, 251):
            self._rset_unless_closing(start)
            return _reply(*rcpt, "rcpt")
        if start[0] != 354:
            self._rset_unless_closing(start)
            return _reply(*start, "data")
        content = _dot_stuffed(data)
        ahead = next_envelope if next_envelope and self._pipelining(*next_envelope) else None
        if ahead:
            content += _commands(*ahead)
            if next_ready:
                content += b"DATA\r\n"
        connection.sock.sendall(content)
        self._ahead = ahead
        self._data_ahead = bool(ahead and next_ready)
        return None

    def _rset_unless_closing(self, reply: tuple[int, bytes]) -> None:
        """RSET after a refused transaction, unless the server said it is closing (421)."""
        if reply[0] == 421:
            self._drop()
        else:
            self.connection.rset()

    def _drop(self) -> None:
        """Forget a connection the server closed or that timed out; the next send reconnects."""
        self._ahead, self._data_ahead = None, False
        if self.connection is not None:
            try:
                self.connection.close()
            except OSError:
                pass
            self.connection = None


_NOTHING = object()


def _commands(envelope_from: str, recipient: str) -> bytes:
    """MAIL and RCPT for plain (dot-atom) addresses, as one write."""
    return f"MAIL FROM:<{envelope_from}>\r\nRCPT TO:<{recipient}>\r\n".encode("ascii")


# A dot-atom address: smtplib's quoteaddr() gives it back as "<address>", unchanged.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")


def _command(connection: smtplib.SMTP, verb: str, prefix: str, address: str) -> tuple[int, bytes]:
    """MAIL FROM or RCPT TO, as connection.mail()/rcpt() send it without options. Their
    quoteaddr() parses every address with the email package's header parser, which costs more
    than the rest of the SMTP transaction; a plain address (what we send to and from) goes as it
    is, anything else through smtplib."""
    if _DOT_ATOM.match(address):
        connection.putcmd(verb, f"{prefix}<{address}>")
        return connection.getreply()
    if verb == "mail":
        return connection.mail(address)
    return connection.rcpt(address)


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA sends it (RFC 5321 4.5.2, as smtplib's data() does): a leading dot
    doubled on every line, and the end-of-data line."""
    if data.startswith(b".") or b"\n." in data:  # mostly not: no regex over the message
        data = _LEADING_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _decode(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _text(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_decode(exc.smtp_error)}"
    return str(exc) or exc.__class__.__name__


class EspSession(_Session):
    """The same interface as SmtpSession for an account that sends through an anymail backend
    (`SendingAccount.esp`): there is no connection to hold, and each send is one API call."""

    def __enter__(self) -> EspSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if not self.account.esp:
            raise AccountError(f"{self.account.name} has no ESP configured")

    def close(self) -> None:
        pass

    def submit(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        key: object,
        next_envelope: tuple[str, str] | None = None,
        next_ready: bool = False,
    ) -> None:
        """As SmtpSession.submit: the reply is ready at once (there is nothing to send ahead)."""
        self._completed.append((key, self.send(envelope_from, recipient, data)))

    def flush(self) -> None:
        pass

    def send(self, envelope_from: str, recipient: str, data: bytes) -> Reply:
        from tracking.esp import esp_send  # tracking.esp builds on this module

        accepted, esp_message_id, detail = esp_send(
            account=self.account, data=data, envelope_from=envelope_from, recipient=recipient
        )
        if accepted:
            return Reply(250, "", detail, "data", esp_message_id=esp_message_id)
        # Refused by the ESP for this recipient: its own words decide hard or soft.
        return Reply(None if not detail else 550, "", detail, "rcpt")


def session_for(account: SendingAccount) -> SmtpSession | EspSession:
    return EspSession(account) if account.esp else SmtpSession(account)
