"""Signed, opaque, short, URL-safe tokens for tracking links and VERP addresses.

A token is the message's id under a keyed permutation (so ids are neither readable nor
guessable) followed by a truncated HMAC over the kind, the permuted id and, for clicks, the
target URL. Checking one needs no database: a forged or altered token fails the HMAC. Tokens
made with a key in SECRET_KEY_FALLBACKS stay valid after a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

OPEN = "o"
CLICK = "c"
UNSUBSCRIBE = "u"
VERP = "v"
_KINDS = {OPEN, CLICK, UNSUBSCRIBE, VERP}
_TAG_BYTES = 10  # 80 bits: forging one takes ~2**79 tries against a rate-limited endpoint


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """URL-safe base64 without padding (base64.urlsafe_b64encode's letters, one C call)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=64)
def _round_key(secret: str, n: int) -> bytes:
    return hashlib.sha256(f"leadcenter.token.feistel.{n}.{secret}".encode()).digest()


@lru_cache(maxsize=4096)  # the six tokens of one email share the same permuted id
def _permute(value: int, secret: str, *, inverse: bool = False) -> int:
    """A 4-round Feistel network over 64 bits: a keyed bijection of message ids."""
    left, right = value >> 32, value & 0xFFFFFFFF
    rounds = range(3, -1, -1) if inverse else range(4)
    for n in rounds:
        key = _round_key(secret, n)
        if inverse:
            f = int.from_bytes(_hmac_sha256(key, left.to_bytes(4, "big"))[:4])
            left, right = right ^ f, left
        else:
            f = int.from_bytes(_hmac_sha256(key, right.to_bytes(4, "big"))[:4])
            left, right = right, left ^ f
    return (left << 32) | right


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@lru_cache(maxsize=64)
def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states with the key's inner and outer pads already hashed (RFC 2104)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256, the same bytes as hmac.new(key, message, "sha256").digest(), from states
    prepared once per key: a mail carries half a dozen tokens, each one or more HMACs, and
    setting a key up costs more than hashing a few bytes."""
    inner, outer = _hmac_pads(key)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


@lru_cache(maxsize=16)
def _tag_states(secret: str) -> tuple[Any, Any]:
    return _hmac_pads(f"leadcenter.token.{secret}".encode())


def _tag(secret: str, kind: str, body: bytes, extra: str) -> bytes:
    return _signed(_tag_states(secret), kind, body, extra)


def _signed(states: tuple[Any, Any], kind: str, body: bytes, extra: str) -> bytes:
    """The tag: HMAC-SHA256 (_hmac_sha256) of kind, body and extra, truncated."""
    inner, outer = states[0].copy(), states[1].copy()
    inner.update(b"%s\0%s\0%s" % (kind.encode(), body, extra.encode()))
    outer.update(inner.digest())
    return outer.digest()[:_TAG_BYTES]


def _secrets() -> list[str]:
    return [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]


class MessageTokens:
    """The tokens of one message: its id permuted and the key's HMAC states set up once, for
    the half a dozen tokens of its email (unsubscribe, open, each link, VERP)."""

    __slots__ = ("_body", "_states")

    def __init__(self, message_id: int, secret: str | None = None) -> None:
        secret = secret or settings.SECRET_KEY
        self._body = struct.pack(">Q", _permute(message_id, secret))
        self._states = _tag_states(secret)

    def raw(self, kind: str, extra: str = "") -> bytes:
        if kind not in _KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        return self._body + _signed(self._states, kind, self._body, extra)

    def token(self, kind: str, extra: str = "") -> str:
        return _b64(self.raw(kind, extra))

    def click(self, url: str) -> str:
        """The click token carries its target URL, signed together with the message."""
        return f"{self.token(CLICK, url)}.{_b64_url(url)}"

    def verp(self, return_path: str) -> str:
        """bounces@example.com -> bounces+<token>@example.com for the envelope sender."""
        # Base32, lower-cased: some servers change the case of the local part they bounce to.
        local, _, domain = return_path.rpartition("@")
        return f"{local}+{_b32_lower(self.raw(VERP))}@{domain}"


def _make_raw(kind: str, message_id: int, extra: str, secret: str | None = None) -> bytes:
    return MessageTokens(message_id, secret).raw(kind, extra)


# Base32 (RFC 4648) letters, lower-cased, by 10-bit pairs.
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]
_RAW_BITS = (8 + _TAG_BYTES) * 8  # 144: 29 base32 letters, the last one padded with 1 bit
_B32_SHIFTS = tuple(range(-(-_RAW_BITS // 5) * 5 - 10, -1, -10))


def _b32_lower(raw: bytes) -> str:
    """base64.b32encode(raw) without padding, lower-cased, for a token's 18 bytes: the
    standard library's is written in Python and costs more than the HMAC."""
    if len(raw) * 8 != _RAW_BITS:
        return base64.b32encode(raw).decode().rstrip("=").lower()
    n = int.from_bytes(raw, "big") << (-_RAW_BITS % 5)
    pairs = _B32_PAIRS
    return "".join([pairs[(n >> shift) & 1023] for shift in _B32_SHIFTS]) + _B32[n & 31]


def _read_raw(kind: str, raw: bytes, extra: str) -> int | None:
    if len(raw) != 8 + _TAG_BYTES:
        return None
    body, tag = raw[:8], raw[8:]
    for secret in _secrets():
        if hmac.compare_digest(tag, _tag(secret, kind, body, extra)):
            return _permute(struct.unpack(">Q", body)[0], secret, inverse=True)
    return None


def make_token(kind: str, message_id: int, extra: str = "", *, secret: str | None = None) -> str:
    """`secret`: settings.SECRET_KEY, when the caller has read it already (an email carries
    half a dozen tokens)."""
    return _b64(_make_raw(kind, message_id, extra, secret))


def read_token(kind: str, token: str, extra: str = "") -> int | None:
    """The message id a token was made for, or None for anything forged, altered or garbled."""
    try:
        raw = _unb64(token)
    except (ValueError, TypeError):
        return None
    return _read_raw(kind, raw, extra)


@dataclass(frozen=True)
class ClickTarget:
    message_id: int
    url: str


def make_click_token(message_id: int, url: str, *, secret: str | None = None) -> str:
    """The click token carries its target URL, signed together with the message."""
    return MessageTokens(message_id, secret).click(url)


@lru_cache(maxsize=1024)  # a campaign's links are the same in every email
def _b64_url(url: str) -> str:
    return _b64(url.encode())


def read_click_token(token: str) -> ClickTarget | None:
    signed, _, encoded_url = token.partition(".")
    try:
        url = _unb64(encoded_url).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if not url.startswith(("https://", "http://")):
        return None
    message_id = read_token(CLICK, signed, url)
    return ClickTarget(message_id, url) if message_id is not None else None


def verp_address(return_path: str, message_id: int, *, secret: str | None = None) -> str:
    """bounces@example.com -> bounces+<token>@example.com for the envelope sender."""
    return MessageTokens(message_id, secret).verp(return_path)


def read_verp_address(address: str) -> int | None:
    local = address.rpartition("@")[0]
    if "+" not in local:
        return None
    token = local.rpartition("+")[2].upper()
    try:
        raw = base64.b32decode(token + "=" * (-len(token) % 8))
    except (ValueError, TypeError):
        return None
    return _read_raw(VERP, raw, "")
