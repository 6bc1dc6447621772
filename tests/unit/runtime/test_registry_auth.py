"""Pull secrets (.dockerconfigjson) -> registry logins, as the kubelet's keyring matches them."""

from __future__ import annotations

import base64
import json

import pytest

from turbok.runtime.reference import parse
from turbok.runtime.registry import Credential, credentials_for, parse_dockerconfig


def doc(auths: dict[str, dict[str, str]]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_and_username_password_forms() -> None:
    creds = parse_dockerconfig(doc({"https://index.docker.io/v1/": {"auth": b64("u:p:with:colons")},
                                    "ghcr.io": {"username": "a", "password": "b"},
                                    "acr.example": {"identitytoken": "refresh"}}))
    assert creds[0] == Credential("docker.io", "u", "p:with:colons")
    assert creds[1] == Credential("ghcr.io", "a", "b")
    assert creds[2].identity_token == "refresh"
    assert "p:with" not in repr(creds[0]) and "***" in repr(creds[0])


def test_legacy_dockercfg_and_bad_documents() -> None:
    assert parse_dockerconfig(json.dumps({"quay.io": {"auth": b64("x:y")}}))[0].registry == "quay.io"
    with pytest.raises(ValueError, match="not JSON"):
        parse_dockerconfig(b"{nope")
    with pytest.raises(ValueError, match="base64"):
        parse_dockerconfig(doc({"quay.io": {"auth": "***"}}))


def test_matching_exact_before_glob_and_ports_matter() -> None:
    docs = [doc({"*.example.com": {"auth": b64("glob:1")}}),
            doc({"reg.example.com": {"auth": b64("exact:2")}, "reg.example.com:5000": {"auth": b64("port:3")},
                 "other.io": {"auth": b64("no:4")}})]
    names = [c.username for c in credentials_for(parse("reg.example.com/a/b:1"), docs)]
    assert names == ["exact", "glob"]
    assert [c.username for c in credentials_for(parse("reg.example.com:5000/a:1"), docs)] == ["port"]
    assert credentials_for(parse("x.y.example.com/a:1"), docs) == []  # one label per star
    assert [c.username for c in credentials_for(parse("python:3"), [doc({"docker.io": {"auth": b64("hub:5")}})])] \
        == ["hub"]
