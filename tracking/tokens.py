"""Signed, opaque, short, URL-safe tokens for tracking links and VERP addresses.

A token is the message's id under a keyed permutation (so ids are neither readable nor
guessable) followed by a truncated HMAC over the kind, the permuted id and, for clicks, the
target URL. Checking one needs no database: a forged or altered token fails the HMAC. Tokens
made with a key in SECRET_KEY_FALLBACKS stay valid after a rotation.
"""

from __future__ import annotations

import base64
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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
def _tag_key(secret: str) -> bytes:
    return f"leadcenter.token.{secret}".encode()


def _tag(secret: str, kind: str, body: bytes, extra: str) -> bytes:
    message = kind.encode() + b"\0" + body + b"\0" + extra.encode()
    return _hmac_sha256(_tag_key(secret), message)[:_TAG_BYTES]


def _secrets() -> list[str]:
    return [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]


def _make_raw(kind: str, message_id: int, extra: str, secret: str | None = None) -> bytes:
    if kind not in _KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    secret = secret or settings.SECRET_KEY
    body = struct.pack(">Q", _permute(message_id, secret))
    return body + _tag(secret, kind, body, extra)


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
    return f"{make_token(CLICK, message_id, url, secret=secret)}.{_b64_url(url)}"


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
    # Base32, lower-cased: some servers change the case of the local part they bounce to.
    raw = _make_raw(VERP, message_id, "", secret)
    token = base64.b32encode(raw).decode().rstrip("=").lower()
    local, _, domain = return_path.rpartition("@")
    return f"{local}+{token}@{domain}"


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
