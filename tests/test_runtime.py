"""forge_slo.runtime: the one token check, token validation, the loopback policy, JSON bodies."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge_slo.errors import UsageError
from forge_slo.runtime import auth, net
from forge_slo.runtime.serving import MAX_JSON_DEPTH, BodyError, parse_json


@settings(max_examples=300, deadline=None)
@given(header=st.one_of(st.none(), st.text(), st.text().map(lambda t: "Bearer " + t),
                        st.binary().map(lambda b: "Bearer " + b.decode("utf-8", "surrogateescape"))))
def test_the_token_check_answers_any_header_without_raising(header: str | None) -> None:
    assert auth.authorized(header, "s3cret") is (auth.bearer_token(header) == "s3cret")


@settings(max_examples=200, deadline=None)
@given(given_token=st.one_of(st.none(), st.integers(), st.text(), st.lists(st.text())))
def test_a_token_from_a_json_body_is_compared_whatever_its_type(given_token: object) -> None:
    assert auth.token_matches(given_token, "s3cret") is (given_token == "s3cret")


def test_bearer_header_forms() -> None:
    assert auth.authorized("Bearer s3cret", "s3cret") and auth.authorized("bearer   s3cret  ", "s3cret")
    assert not auth.authorized("Basic s3cret", "s3cret") and not auth.authorized("s3cret", "s3cret")
    assert not auth.authorized("Bearer \ud800", "s3cret") and not auth.authorized("", "s3cret")
    assert auth.authorized(None, None)  # no token configured: open


@pytest.mark.parametrize(("token", "reason"), [
    ("", "empty"), ("  \t", "empty"), ("a b", "whitespace"), ("s3crét", "'é'"), ("tok\x00", "U+0000"),
])
def test_unusable_tokens_are_refused_naming_their_source(token: str, reason: str) -> None:
    with pytest.raises(UsageError, match=r"^--token: the token .*" + re.escape(reason)):
        auth.check_token(token, "--token")
    with pytest.raises(UsageError, match=r"^\$GATE_TOKEN: "):
        auth.token_from("--token", None, "GATE_TOKEN", {"GATE_TOKEN": token or " "})


def test_token_from_prefers_the_flag_and_treats_an_empty_variable_as_unset() -> None:
    assert auth.token_from("--token", "flag-tok", "T", {"T": "env-tok"}) == "flag-tok"
    assert auth.token_from("--token", None, "T", {"T": "env-tok"}) == "env-tok"
    assert auth.token_from("--token", None, "T", {"T": ""}) is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.5", False),
    ("example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert net.is_loopback(host) is loopback


def test_exposure_beyond_loopback_needs_a_token() -> None:
    net.check_exposure("127.0.0.1", protected="faults", token=None, remedy="--admin-token")
    net.check_exposure("0.0.0.0", protected="faults", token="t", remedy="--admin-token")
    with pytest.raises(UsageError, match="refusing to serve faults on all interfaces.*--admin-token.*127.0.0.1"):
        net.check_exposure("0.0.0.0", protected="faults", token=None, remedy="--admin-token")


def test_json_bodies_nested_too_deeply_are_refused_without_recursion() -> None:
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(BodyError, match="nested too deeply"):
            parse_json(b"[" * depth + b"]" * depth)
    with pytest.raises(BodyError, match="not UTF-8"):
        parse_json(b'"\xff"')
    with pytest.raises(BodyError, match="not JSON"):
        parse_json(b"{nope")
