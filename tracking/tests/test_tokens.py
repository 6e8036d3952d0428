from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tracking import tokens


def test_a_token_reads_back_to_its_message():
    for message_id in (1, 42, 2**40 + 7, 2**63 - 1):
        assert tokens.read_token(tokens.OPEN, tokens.make_token(tokens.OPEN, message_id)) == (
            message_id
        )


def test_a_token_is_short_url_safe_and_does_not_show_the_id():
    token = tokens.make_token(tokens.OPEN, 12345)

    assert len(token) <= 24
    assert token.replace("-", "").replace("_", "").isalnum()
    assert "12345" not in token
    # Neighbouring ids give unrelated tokens.
    assert tokens.make_token(tokens.OPEN, 12346)[:6] != token[:6]


def test_a_token_of_one_kind_is_refused_for_another():
    token = tokens.make_token(tokens.OPEN, 7)

    assert tokens.read_token(tokens.UNSUBSCRIBE, token) is None
    assert tokens.read_token(tokens.CLICK, token) is None


def test_an_altered_token_is_refused():
    token = tokens.make_token(tokens.UNSUBSCRIBE, 7)
    for i in range(len(token)):
        swapped = "A" if token[i] != "A" else "B"
        altered = token[:i] + swapped + token[i + 1 :]
        assert tokens.read_token(tokens.UNSUBSCRIBE, altered) is None


def test_a_click_token_signs_its_target_url():
    token = tokens.make_click_token(9, "https://example.test/pricing?x=1")
    target = tokens.read_click_token(token)
    assert target == tokens.ClickTarget(9, "https://example.test/pricing?x=1")

    signed, _, _ = token.partition(".")
    evil = tokens._b64(b"https://evil.example/")
    assert tokens.read_click_token(f"{signed}.{evil}") is None


def test_tokens_made_before_a_key_rotation_stay_valid(settings):
    old = tokens.make_token(tokens.OPEN, 5)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-brand-new-secret-key-after-rotation-0123456789-abcdefghijkl"

    assert tokens.read_token(tokens.OPEN, old) == 5
    assert tokens.read_token(tokens.OPEN, tokens.make_token(tokens.OPEN, 5)) == 5

    settings.SECRET_KEY_FALLBACKS = []
    assert tokens.read_token(tokens.OPEN, old) is None


def test_a_verp_address_names_its_message_in_any_case():
    address = tokens.verp_address("bounces@leadcenter.test", 77)

    assert address.startswith("bounces+") and address.endswith("@leadcenter.test")
    assert tokens.read_verp_address(address) == 77
    assert tokens.read_verp_address(address.upper()) == 77
    assert tokens.read_verp_address("bounces@leadcenter.test") is None


@given(st.text(max_size=80))
def test_garbage_is_never_read_as_a_token(garbage):
    assert tokens.read_token(tokens.OPEN, garbage) is None
    assert tokens.read_click_token(garbage) is None
    assert tokens.read_verp_address(garbage + "@x.test") is None
