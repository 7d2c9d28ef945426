"""The web guard's decisions, header by header (the real worker is in test_web_security)."""

from __future__ import annotations

from pydantic import SecretStr

from sa01.core.settings import Settings
from streams.web_guard import WebGuard

TOKEN = "s3cret-operator-token"


def guard(**overrides: object) -> WebGuard:
    values: dict[str, object] = {"operator_token": SecretStr(TOKEN)} | overrides
    return WebGuard(Settings(**values))  # type: ignore[arg-type]


def headers(**extra: str) -> dict[str, str]:
    base = {
        "Host": "127.0.0.1:6066",
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json; charset=utf-8",
    }
    return base | {k.replace("_", "-"): v for k, v in extra.items()}


def status(g: WebGuard, method: str = "POST", length: int | None = 20, **extra: str) -> int:
    refused = g.refusal(method, headers(**extra), length)
    return 200 if refused is None else refused.status


def test_a_json_request_with_the_token_from_this_host_passes() -> None:
    assert status(guard()) == 200
    assert status(guard(), Host="localhost:6066", Origin="http://localhost:6066") == 200
    assert status(guard(), Host="[::1]:6066") == 200


def test_each_missing_condition_has_its_own_status() -> None:
    g = guard()
    assert status(g, Authorization="") == 401
    assert status(g, Authorization=f"Basic {TOKEN}") == 401
    assert status(g, Authorization="Bearer wrong") == 403
    assert status(g, Authorization=f"Bearer {TOKEN}x") == 403
    assert status(g, Content_Type="text/plain") == 415
    assert status(g, Content_Type="") == 415
    assert status(g, length=g.max_body_bytes + 1) == 413
    assert status(g, Origin="http://evil.example") == 403
    assert status(g, Origin="null") == 403
    assert status(g, Origin="http://[::1") == 403
    assert status(g, Host="[::1") == 403
    assert status(g, Origin="http://127.0.0.1:9999") == 403
    assert status(g, Host="evil.example:6066") == 403
    assert status(g, Host="") == 403


def test_reads_need_no_token_but_the_right_host() -> None:
    g = guard(operator_token=None)
    assert status(g, "GET", Authorization="") == 200
    assert status(g, "HEAD", Content_Type="text/plain") == 200
    assert status(g, "GET", Host="rebound.example:6066") == 403


def test_without_a_configured_token_every_state_change_says_how_to_enable_it() -> None:
    for g in (guard(operator_token=None), guard(operator_token=SecretStr(""))):
        refused = g.refusal("POST", headers(), 10)
        assert refused is not None and refused.status == 403
        assert "set SA01_OPERATOR_TOKEN" in refused.error
        assert g.refusal("DELETE", headers(), None) is not None


def test_allowed_hosts_extend_the_loopback_names() -> None:
    g = guard(web_allowed_hosts="worker, Ops.Example.com")
    assert status(g, Host="worker:6066") == 200
    assert status(g, Host="ops.example.com", Origin="https://ops.example.com") == 200
    assert status(g, Host="other:6066") == 403


def test_no_refusal_repeats_the_token() -> None:
    g = guard()
    for extra in ({"Authorization": f"Bearer {TOKEN}z"}, {"Content_Type": "text/plain"}):
        refused = g.refusal("POST", headers(**extra), 10)
        assert refused is not None and TOKEN not in refused.error
