"""Classify a failure reply as a hard or soft rejection (DESIGN.md, "Rejections").

Pure functions: no database, no settings. ``classify_rejection`` reads up to five signals and
asks them in this order, stopping at the first *firm* answer:

1. Enhanced status (RFC 3463 ``x.y.z``). Only the codes the rejection table names are firm:
   x.1.1, x.1.10, x.2.1, x.1.6 user not found; x.1.2 domain not found; x.2.2 mailbox full;
   4.4.x and 5.4.7 no answer; every x.7.x (security/policy) spam-blocked; x.1.7/x.1.8 (a bad
   *sender* address, i.e. our side) unspecified. A specific code beats the words next to it
   ("554 5.2.2 ... does not exist" is mailbox full), because servers choose the code with care
   and reuse boilerplate text. Generic codes (5.0.0, 5.1.0, 5.5.0, 5.4.4, ...) fall through so
   the words can say what they mean ("550 5.0.0 User unknown" is user not found).
2. Basic code. Only 421 (service closing the channel) is firm: no answer. 550/554/452/...
   are used for everything, so they fall through to the words.
3. ESP fields: SES ``bounceType``/``bounceSubType``, Postmark ``Type``.
4. anymail ``reject_reason``. ``bounced`` and ``other`` say nothing about the cause.
5. Keywords in the text, checked in a fixed order (sender problem, domain, user, mailbox full,
   spam, no answer) so that e.g. "mailbox is full: retry timeout exceeded" is mailbox full.

A few ESP answers are only a *default* (Postmark ``HardBounce``, anymail ``invalid``: "some
bad address"): a later signal may refine them, e.g. to domain not found.

Hard vs soft: only user/domain not found are ever hard, and only when the failure is
permanent. A temporary failure never marks a contact invalid, so when the reply is 4xx (basic
or enhanced class 4), or without codes the ESP says transient, or without codes and ESP the text
says "try again"/"temporarily", a user-not-found answer becomes unspecified and a
domain-not-found one becomes no answer (a DNS lookup that fails for now means we could not reach
the recipient's server). Nothing readable at all is soft unspecified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from tracking.models import Rejection

Kind = Rejection.Kind
Category = Rejection.Category

# Lookarounds keep IP addresses, ports and ids ("[1.2.3.4]", "(554.30)", "AS(201806281)") from
# passing for codes. Subjects are 0-7 per RFC 3463, which also rejects versions like "4.94.2".
_STATUS_RE = re.compile(r"(?<![\w.])([245])\.([0-7])\.(\d{1,3})(?!\.?\d)")
_CODE_RE = re.compile(r"(?<![\w.])([245][0-5]\d)(?=[ -]|$)", re.MULTILINE)
# "smtp; ", "X-Postfix; " -- the RFC 3464 diagnostic-type in front of a Diagnostic-Code.
_DIAG_TYPE_RE = re.compile(r"^\s*[\w-]+;\s*")

_SENDER_RE = re.compile(
    r"sender address rejected|bad (outbound )?sender|unknown sender"
    r"|sender domain (not found|does not exist|must resolve|unknown)"
)
_DOMAIN_RE = re.compile(
    r"host or domain name not found|domain (name )?not found|no such domain|unknown domain"
    r"|(domain|host) (does not|doesn't) exist|name service error|nxdomain|\bno mx\b"
    r"|no (mx|mail exchanger|valid mx)|mx (record )?not found|unrou?teable (address|mail domain)"
    r"|non-?existent (host|domain)|host unknown"
)
_USER_RE = re.compile(
    r"user unknown|unknown (user|recipient|mailbox|local ?part)|no such (user|recipient|mailbox"
    r"|address|account)|does not exist|doesn't exist|(does not|doesn't) have an? [\w.-]+ account"
    r"|user not found|recipient ?not ?found|(mailbox|recipient|address) (is )?(not found|invalid)"
    r"|invalid (recipient|mailbox|address)|(mailbox|account) (is |has been )?disabled"
    r"|not our customer|no mailbox here"
)
_MAILBOX_FULL_RE = re.compile(
    r"(?<!sending )(?<!rate )quota|mailbox (is )?full|full mailbox|insufficient (system )?storage"
    r"|exceeded storage allocation|(mailbox|storage|disk) (space |size )?(limit )?exceeded"
)
_SPAM_RE = re.compile(
    r"spam|blocked|block ?list|black ?list|deny ?list|reputation|unsolicited|\brbl\b|dnsbl"
    r"|banned|junk|phish|\bdmarc\b|\bspf\b|unauthenticated|content rejected"
)
_NO_ANSWER_RE = re.compile(
    r"timed? ?out|time-out|connection (was )?(refused|reset|closed|dropped)|lost connection"
    r"|connection lost|no route to host|(network|host) (is )?unreachable"
    r"|(could not|couldn't|unable to|failed to|can't|cannot) connect|message expired"
)
_KEYWORDS: tuple[tuple[re.Pattern[str], Category], ...] = (
    # Our sender address is the problem (e.g. "Sender address rejected: Domain not found"):
    # checked first so the recipient is never marked invalid for it.
    (_SENDER_RE, Category.UNSPECIFIED),
    # Domain before user: "domain does not exist" must not read as a missing user.
    (_DOMAIN_RE, Category.DOMAIN_NOT_FOUND),
    (_USER_RE, Category.USER_NOT_FOUND),
    (_MAILBOX_FULL_RE, Category.MAILBOX_FULL),
    (_SPAM_RE, Category.SPAM_BLOCKED),
    (_NO_ANSWER_RE, Category.NO_ANSWER),
)
_TEMPORARY_TEXT_RE = re.compile(r"try again|temporar|deferr|greylist")

# Enhanced status "subject.detail" -> category, firm for class 4 and 5 alike.
_STATUS_CATEGORIES: dict[str, Category] = {
    "1.1": Category.USER_NOT_FOUND,
    "1.10": Category.USER_NOT_FOUND,
    "1.6": Category.USER_NOT_FOUND,
    "2.1": Category.USER_NOT_FOUND,
    "1.2": Category.DOMAIN_NOT_FOUND,
    "2.2": Category.MAILBOX_FULL,
    "4.7": Category.NO_ANSWER,
    "1.7": Category.UNSPECIFIED,
    "1.8": Category.UNSPECIFIED,
}

_ANYMAIL: dict[str, tuple[Category, bool]] = {  # reject_reason -> (category, firm)
    "invalid": (Category.USER_NOT_FOUND, False),
    "timed_out": (Category.NO_ANSWER, True),
    "spam": (Category.SPAM_BLOCKED, True),
    "blocked": (Category.SPAM_BLOCKED, True),
}

# SES (bounceType, bounceSubType) -> category; all firm. bounceType alone gives permanence.
_SES: dict[tuple[str, str], Category] = {
    ("permanent", "noemail"): Category.USER_NOT_FOUND,
    # SES's global suppression list only holds addresses that hard-bounced before.
    ("permanent", "suppressed"): Category.USER_NOT_FOUND,
    # The account-level list also holds complainers, so it says nothing about the address.
    ("permanent", "onaccountsuppressionlist"): Category.UNSPECIFIED,
    ("permanent", "unsubscribedrecipient"): Category.UNSPECIFIED,
    ("transient", "mailboxfull"): Category.MAILBOX_FULL,
    ("transient", "messagetoolarge"): Category.UNSPECIFIED,
    ("transient", "contentrejected"): Category.SPAM_BLOCKED,
    ("transient", "attachmentrejected"): Category.SPAM_BLOCKED,
}

# Postmark Type -> (category or None, firm, temporary or None when the type does not say).
_POSTMARK: dict[str, tuple[Category | None, bool, bool | None]] = {
    # Postmark's HardBounce is "unknown user, mailbox not found" but also covers dead domains.
    "hardbounce": (Category.USER_NOT_FOUND, False, False),
    "bademailaddress": (Category.USER_NOT_FOUND, True, False),
    "softbounce": (None, False, True),
    "transient": (Category.NO_ANSWER, False, True),
    "dnserror": (Category.NO_ANSWER, True, True),  # Postmark: "a temporary DNS error"
    "spamnotification": (Category.SPAM_BLOCKED, True, None),
    "spamcomplaint": (Category.SPAM_BLOCKED, True, None),
    "blocked": (Category.SPAM_BLOCKED, True, None),
    "dmarcpolicy": (Category.SPAM_BLOCKED, True, None),
    "challengeverification": (Category.SPAM_BLOCKED, True, None),
    # An out-of-office or a Postmark-side suppression says nothing about the address.
    "autoresponder": (Category.UNSPECIFIED, True, None),
    "manuallydeactivated": (Category.UNSPECIFIED, True, None),
    "unsubscribe": (Category.UNSPECIFIED, True, None),
    "addresschange": (Category.UNSPECIFIED, True, None),
}

# What a hard category means when the failure is only temporary.
_SOFTENED = {
    Category.USER_NOT_FOUND: Category.UNSPECIFIED,
    Category.DOMAIN_NOT_FOUND: Category.NO_ANSWER,
}


@dataclass(frozen=True)
class Classification:
    kind: Rejection.Kind
    category: Rejection.Category

    @property
    def is_hard(self) -> bool:
        return self.kind == Kind.HARD


class _Verdict(NamedTuple):
    category: Category
    firm: bool


def parse_smtp_reply(text: str) -> tuple[int | None, str, str]:
    """Split a raw reply or Diagnostic-Code into (basic code, enhanced status, remaining text).

    "smtp; 550-5.1.1 The account ... Learn more at 550 5.1.1  https://..." gives
    (550, "5.1.1", "The account ... Learn more at https://..."). Missing parts are None / "".
    """
    text = _DIAG_TYPE_RE.sub("", text or "", count=1)
    code_match = _CODE_RE.search(text)
    status_match = _STATUS_RE.search(text)
    code = int(code_match.group(1)) if code_match else None
    status = status_match.group(0) if status_match else ""
    rest, pairs = text, 0
    if code is not None and status:
        # Multi-line replies repeat "550-5.1.1 " in front of every line; drop each copy.
        pair_re = rf"(?<![\w.]){code}[ -]+{re.escape(status)}(?!\.?\d)"
        rest, pairs = re.subn(pair_re, " ", rest)
    if not pairs:  # code and status apart (or one missing): drop the first of each
        rest = _STATUS_RE.sub(" ", _CODE_RE.sub(" ", rest, count=1), count=1)
    return code, status, " ".join(rest.split())


def classify_rejection(
    *,
    smtp_code: int | None = None,
    smtp_status: str = "",
    text: str = "",
    esp_fields: Mapping[str, Any] | None = None,
    reject_reason: str = "",
) -> Classification:
    """Classify one failure reply; see the module docstring for the precedence."""
    text = text or ""
    parsed_code, parsed_status, _ = parse_smtp_reply(text)
    if smtp_code is None or not 200 <= smtp_code <= 599:
        smtp_code = parsed_code
    status_match = _STATUS_RE.search(smtp_status or "")
    status = status_match.group(0) if status_match else parsed_status
    esp_verdict, esp_temporary = _esp_verdict(esp_fields or {})
    lowered = text.lower().replace("\u2019", "'")

    if smtp_code is not None or status:
        temporary = (smtp_code is not None and smtp_code // 100 == 4) or status.startswith("4")
    elif esp_temporary is not None:
        temporary = esp_temporary
    else:
        temporary = bool(_TEMPORARY_TEXT_RE.search(lowered))

    category = _first_category(
        _status_verdict(status),
        _Verdict(Category.NO_ANSWER, True) if smtp_code == 421 else None,
        esp_verdict,
        _anymail_verdict(reject_reason),
        _keyword_verdict(lowered),
    )
    if category in Rejection.HARD_CATEGORIES:
        if not temporary:
            return Classification(Kind.HARD, category)
        category = _SOFTENED[category]
    return Classification(Kind.SOFT, category)


def _first_category(*verdicts: _Verdict | None) -> Category:
    """The first firm verdict, else the first default one, else unspecified."""
    default: Category | None = None
    for verdict in verdicts:
        if verdict is None:
            continue
        if verdict.firm:
            return verdict.category
        default = default or verdict.category
    return default or Category.UNSPECIFIED


def _status_verdict(status: str) -> _Verdict | None:
    if not status:
        return None
    klass, subject, detail = status.split(".")
    if subject == "7" or (klass == "4" and subject == "4"):
        return _Verdict(Category.SPAM_BLOCKED if subject == "7" else Category.NO_ANSWER, True)
    category = _STATUS_CATEGORIES.get(f"{subject}.{int(detail)}")
    return _Verdict(category, True) if category else None


def _esp_verdict(fields: Mapping[str, Any]) -> tuple[_Verdict | None, bool | None]:
    """(verdict, temporary) from SES or Postmark fields; temporary is None when unknown."""
    bounce_type = str(fields.get("bounceType") or "").strip().lower()
    if bounce_type:
        sub_type = str(fields.get("bounceSubType") or "").strip().lower()
        temporary = {"permanent": False, "transient": True}.get(bounce_type)
        category = _SES.get((bounce_type, sub_type))
        return (_Verdict(category, True) if category else None), temporary
    postmark_type = str(fields.get("Type") or "").strip().lower()
    if postmark_type in _POSTMARK:
        category, firm, temporary = _POSTMARK[postmark_type]
        return (_Verdict(category, firm) if category else None), temporary
    return None, None


def _anymail_verdict(reject_reason: str) -> _Verdict | None:
    hit = _ANYMAIL.get((reject_reason or "").strip().lower())
    return _Verdict(*hit) if hit else None


def _keyword_verdict(lowered: str) -> _Verdict | None:
    for pattern, category in _KEYWORDS:
        if pattern.search(lowered):
            return _Verdict(category, True)
    return None
