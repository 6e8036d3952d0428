"""An aiosmtpd server that misbehaves on purpose, one fault at a time.

A fault names the stage where it strikes (greeting, STARTTLS, MAIL, RCPT, DATA) and what it
does there: a reply, a silence longer than the client's time-out, a dropped connection, or
garbage instead of a TLS handshake. Recipient faults strike only for addresses that contain
`TARGET`, so the messages before and after show whether the worker carried on.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from campaigns.simulator import SimulatedInternet, _free_port

TARGET = "fault-target"


@dataclass(frozen=True)
class Fault:
    stage: str  # "greeting", "starttls", "mail", "rcpt", "data"
    reply: str = ""  # what the server answers (empty: nothing)
    hang: float = 0.0  # seconds of silence before answering
    close: bool = False  # drop the connection (after the reply, if any)
    every_second_mail: bool = False  # "mail": only the second transaction of a session


class FaultyInternet(SimulatedInternet):
    def __init__(self, fault: Fault | None = None) -> None:
        super().__init__()
        self.fault = fault

    def _strikes(self, stage: str, addresses: list[str]) -> bool:
        fault = self.fault
        return fault is not None and fault.stage == stage and any(TARGET in a for a in addresses)

    async def _misbehave(self, server) -> str:
        fault = self.fault
        if fault.hang:
            await asyncio.sleep(fault.hang)
        if fault.close:
            loop = asyncio.get_running_loop()
            if fault.reply:
                loop.call_soon(server.transport.close)
            else:
                server.transport.close()
        return fault.reply or "250 OK"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        fault = self.fault
        if fault is not None and fault.stage == "mail":
            session.mails = getattr(session, "mails", 0) + 1
            if not fault.every_second_mail or session.mails == 2:
                return await self._misbehave(server)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self._strikes("rcpt", [address]):
            return await self._misbehave(server)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        if self._strikes("data", envelope.rcpt_tos):
            return await self._misbehave(server)
        return await super().handle_DATA(server, session, envelope)


class FaultySMTP(SMTP):
    """Adds the faults that come before any handler hook: no greeting, a broken STARTTLS."""

    async def _handle_client(self) -> None:
        fault = self.event_handler.fault
        if fault is not None and fault.stage == "greeting":
            await asyncio.sleep(fault.hang)  # connected, and silent
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 Ready to start TLS")
        # Not a TLS ServerHello: the client's handshake fails.
        self.transport.write(b"this is not TLS\r\n" * 8)
        self.transport.close()


class FaultyServer:
    """`with FaultyServer(fault) as server:` a faulty SMTP server on a free loopback port."""

    def __init__(self, fault: Fault | None = None, **smtp_options) -> None:
        self.handler = FaultyInternet()
        self.port = _free_port()
        if fault is not None and fault.stage == "starttls":
            # Advertise STARTTLS (aiosmtpd does so only with a TLS context); FaultySMTP never
            # uses it.
            smtp_options["tls_context"] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.controller = _Controller(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10, **smtp_options
        )
        self._fault = fault

    def __enter__(self) -> FaultyServer:
        self.controller.start()
        # After start: the controller's own readiness probe must get its greeting.
        self.handler.fault = self._fault
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


class _Controller(Controller):
    def factory(self) -> SMTP:
        return FaultySMTP(self.handler, **self.SMTP_kwargs)
