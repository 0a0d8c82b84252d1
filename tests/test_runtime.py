"""forge_slo.runtime: the one token check, token validation, the loopback policy, JSON bodies."""

from __future__ import annotations

import argparse
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


GATE = ["gate", "serve", "--spec", "s.yaml", "--prometheus", "http://127.0.0.1:9"]
CANARY = ["canary", "--spec", "s.yaml"]
# Every duration flag outside the load test (its flags are tested with it): (parser, argv before, flag, dest).
DURATION_FLAGS = [
    ("cli", ["simulate"], "--read-timeout", "read_timeout"),
    ("cli", ["gpu-exporter"], "--interval", "interval"),
    ("cli", ["gpu-exporter"], "--read-timeout", "read_timeout"),
    ("cli", CANARY, "--prometheus-timeout", "prometheus_timeout"),
    ("cli", CANARY, "--window", "window"),
    ("cli", CANARY, "--interval", "interval"),
    ("cli", GATE, "--prometheus-timeout", "prometheus_timeout"),
    ("cli", GATE, "--look-timeout", "look_timeout"),
    ("cli", GATE, "--read-timeout", "read_timeout"),
    ("cli", GATE, "--window", "window"),
    ("cli", GATE, "--interval", "interval"),
    ("cli", ["gameday", "run", "x.json", "--report", "r"], "--timeout", "timeout"),
    ("cli", ["prometheus-config", "--scrape", "h:1", "--rules", "r"], "--scrape-interval", "scrape_interval"),
    ("cli", ["prometheus-config", "--scrape", "h:1", "--rules", "r"], "--evaluation-interval", "evaluation_interval"),
    ("train", ["watch"], "--stall-after", "stall_after"),
    ("chaos", ["lab"], "--duration", "duration"),
]


def _parser(name: str) -> argparse.ArgumentParser:
    if name == "train":
        from forge_slo.train.__main__ import build_parser as train_parser

        return train_parser()
    if name == "chaos":
        from forge_slo.chaos.__main__ import build_parser as chaos_parser

        return chaos_parser()
    from forge_slo.cli import _parser as cli_parser

    return cli_parser()


@pytest.mark.parametrize(("parser", "before", "flag", "dest"), DURATION_FLAGS,
                         ids=[f"{p}:{b[0]}{' ' + b[1] if b[0] == 'gate' else ''} {f}" for p, b, f, _ in DURATION_FLAGS])
def test_every_duration_flag_takes_one_syntax_and_refuses_bare_numbers(
        parser: str, before: list[str], flag: str, dest: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert getattr(_parser(parser).parse_args([*before, flag, "2.5s"]), dest) == 2.5
    assert getattr(_parser(parser).parse_args([*before, flag, "1m30s"]), dest) == 90.0
    with pytest.raises(SystemExit) as exited:
        _parser(parser).parse_args([*before, flag, "3"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {flag}" in err and "add a unit" in err, err
