"""Tracking tokens (/t/o, /t/c, /t/u) cannot be forged, altered, or pointed at another
message or URL: a bad token records nothing and tells nothing (the pixel is the same GIF,
the click and unsubscribe pages the same 404). Random and mutated tokens are fuzzed."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from campaigns.models import Message
from contacts.models import Contact, Suppression
from leadcenter.factories import MessageFactory
from tests.security.fuzz import fuzz_settings, tried
from tracking import tokens, views
from tracking.models import TrackingEvent

pytestmark = pytest.mark.django_db

TARGET = "https://example.test/pricing?plan=pro"
URLSAFE = string.ascii_letters + string.digits + "-_"


@pytest.fixture(autouse=True)
def _inline_tracking(settings):
    settings.LEADCENTER_TRACKING_BUFFER = "inline"


@pytest.fixture
def messages(db):
    return [
        MessageFactory(recipient__email=f"person{i}@example.test", status=Message.Status.SENT)
        for i in range(2)
    ]


def state() -> tuple:
    return (
        TrackingEvent.objects.count(),
        list(Message.objects.order_by("pk").values()),
        list(Contact.objects.order_by("pk").values()),
        Suppression.objects.count(),
    )


def pixel(client: Client, token: str):
    return client.get(f"/t/o/{quote(token, safe='')}.gif")


def click(client: Client, token: str):
    return client.get(f"/t/c/{quote(token, safe='')}/")


def unsubscribe(client: Client, token: str, method: str = "post"):
    url = f"/t/u/{quote(token, safe='')}/"
    if method == "get":
        return client.get(url)
    return client.post(url, {"List-Unsubscribe": "One-Click"})


def assert_refused(client: Client, token: str) -> None:
    """The three endpoints treat `token` as garbage: nothing recorded, nothing revealed."""
    before = state()
    response = pixel(client, token)
    assert response.status_code == 200 and response.content == views.GIF
    assert click(client, token).status_code == 404
    assert unsubscribe(client, token, "get").status_code == 404
    assert unsubscribe(client, token).status_code == 404
    assert state() == before


# --- known forgeries --------------------------------------------------------------------------


def test_the_valid_tokens_work(client, messages):
    # The positive control for everything below.
    message = messages[0]
    before = TrackingEvent.objects.count()

    assert pixel(client, tokens.make_token(tokens.OPEN, message.pk)).status_code == 200
    response = click(client, tokens.make_click_token(message.pk, TARGET))
    assert response.status_code == 302 and response["Location"] == TARGET
    assert TrackingEvent.objects.count() == before + 2


def test_the_unsubscribe_page_changes_nothing_on_get(client, messages):
    url = f"/t/u/{tokens.make_token(tokens.UNSUBSCRIBE, messages[0].pk)}/"
    before = state()

    assert client.get(url).status_code == 200
    client.head(url)  # link scanners probe with HEAD (answered 405)
    assert state() == before


def test_a_token_of_one_kind_does_not_work_as_another(client, messages):
    message = messages[0]
    for kind in (tokens.OPEN, tokens.UNSUBSCRIBE, tokens.VERP):
        token = tokens.make_token(kind, message.pk)
        before = state()
        if kind != tokens.OPEN:
            assert pixel(client, token).content == views.GIF
        if kind != tokens.UNSUBSCRIBE:
            assert unsubscribe(client, token).status_code == 404
        assert click(client, f"{token}.{tokens._b64(TARGET.encode())}").status_code == 404
        assert state() == before


def test_a_click_token_cannot_be_pointed_at_another_url(client, messages):
    signed = tokens.make_click_token(messages[0].pk, TARGET).partition(".")[0]
    for url in (
        "https://evil.example/",
        TARGET + "&x=1",
        TARGET.replace("https", "http"),
        "https://example.test/pricing?plan=pro#",
        "javascript:alert(1)",
    ):
        assert_refused(Client(), f"{signed}.{tokens._b64(url.encode())}")


def test_a_click_token_for_a_non_web_url_is_refused_even_when_signed(client, messages):
    for url in ("javascript:alert(document.cookie)", "data:text/html,<script>x</script>", "//evil"):
        assert_refused(client, tokens.make_click_token(messages[0].pk, url))


def test_a_token_cannot_be_moved_to_another_message(client, messages):
    first, second = messages
    # The permuted id is signed: glue one message's id to another's tag.
    a = tokens._unb64(tokens.make_token(tokens.UNSUBSCRIBE, first.pk))
    b = tokens._unb64(tokens.make_token(tokens.UNSUBSCRIBE, second.pk))
    for raw in (a[:8] + b[8:], b[:8] + a[8:]):
        assert_refused(client, tokens._b64(raw))


def test_a_token_signed_with_another_key_is_refused(client, messages, settings):
    real_key = settings.SECRET_KEY
    settings.SECRET_KEY = "an-attackers-guess-at-the-key-0123456789-abcdefghijklmnopqrstuv"
    forged = {
        "open": tokens.make_token(tokens.OPEN, messages[0].pk),
        "unsubscribe": tokens.make_token(tokens.UNSUBSCRIBE, messages[0].pk),
        "click": tokens.make_click_token(messages[0].pk, TARGET),
    }
    settings.SECRET_KEY = real_key
    for token in forged.values():
        assert_refused(client, token)


# --- fuzzing ------------------------------------------------------------------------------------


@fuzz_settings()
@given(token=st.text(min_size=0, max_size=80).filter(lambda t: "/" not in t and t.strip()))
def test_random_tokens_record_nothing(client, messages, token):
    tried("tracking tokens: random")
    assert_refused(client, token)


@fuzz_settings()
@given(token=st.text(alphabet=URLSAFE, min_size=20, max_size=40))
def test_random_well_formed_tokens_record_nothing(client, messages, token):
    tried("tracking tokens: random base64url")
    assert_refused(client, token)


@st.composite
def mutations(draw, original: str) -> str:
    chars = list(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(chars) - 1, 0)))
        if op == "replace" and chars:
            chars[i] = draw(st.sampled_from(URLSAFE + "."))
        elif op == "insert":
            chars.insert(i, draw(st.sampled_from(URLSAFE + ".")))
        elif op == "delete" and chars:
            del chars[i]
        elif op == "truncate":
            chars = chars[:i]
    return "".join(chars)


@fuzz_settings(scale=2)
@given(data=st.data(), kind=st.sampled_from(["open", "click", "unsubscribe"]))
def test_mutated_tokens_record_nothing_or_exactly_what_the_original_did(
    client, messages, data, kind
):
    tried("tracking tokens: mutated")
    message = messages[0]
    original = {
        "open": tokens.make_token(tokens.OPEN, message.pk),
        "click": tokens.make_click_token(message.pk, TARGET),
        "unsubscribe": tokens.make_token(tokens.UNSUBSCRIBE, message.pk),
    }[kind]
    token = data.draw(mutations(original))
    # Base64 may spell the same bytes twice (spare bits in the last character of the URL
    # part): such a token is the original, not a forgery.
    same = {
        "open": lambda t: tokens.read_token(tokens.OPEN, t) == message.pk,
        "click": lambda t: tokens.read_click_token(t) == tokens.ClickTarget(message.pk, TARGET),
        "unsubscribe": lambda t: tokens.read_token(tokens.UNSUBSCRIBE, t) == message.pk,
    }[kind]
    if "/" in token or not token or same(token):
        return
    assert_refused(client, token)
