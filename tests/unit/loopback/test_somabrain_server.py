"""The loopback SomaBrain server, driven through real httpx calls (API: docs/somabrain-api.md)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from loopback import somabrain_server
from loopback.llm_server import FailureMode
from loopback.somabrain_server import QUEUED_FOR_REPLAY_WARNING, SomaBrainServer

pytestmark = pytest.mark.timeout(60)

TOKEN = "brain-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("SomaBrainServer-")]


@pytest.fixture
def brain() -> Iterator[SomaBrainServer]:
    server = SomaBrainServer(name="brain", token=TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert _server_threads() == []


@pytest.fixture
def client(brain: SomaBrainServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=brain.base_url, headers=AUTH, timeout=5.0) as http:
        yield http


def memory(
    key: str, text: str, *, tenant: str = "t1", namespace: str = "wm", **extra: Any
) -> dict[str, Any]:
    return {"tenant": tenant, "namespace": namespace, "key": key, "value": {"text": text}, **extra}


def recall(
    client: httpx.Client, query: str, tenant: str | None = "t1", **extra: Any
) -> httpx.Response:
    headers = {} if tenant is None else {"X-Tenant-ID": tenant}
    return client.post("/memory/recall", json={"query": query, **extra}, headers=headers)


# ---------------------------------------------------------------------- remember


def test_remember_answers_the_real_shape(brain: SomaBrainServer, client: httpx.Client) -> None:
    body = memory(
        "k1", "user likes tea", meta={"source": "chat"}, tags=["pref", "pref"], importance=0.7
    )
    response = client.post("/memory/remember", json=body, headers={"X-Request-ID": "req-1"})

    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True
    assert (answer["tenant"], answer["namespace"], answer["key"]) == ("t1", "wm", "k1")
    assert answer["persisted_to_ltm"] is True
    assert answer["promoted_to_wm"] is True
    assert answer["deduplicated"] is False
    assert answer["warnings"] == []
    assert answer["request_id"] == "req-1"
    assert answer["importance"] == 0.7
    assert answer["signals"]["persisted_to_ltm"] is True
    assert len(answer["coordinate"]) == 3
    [stored] = brain.memories()
    assert (stored.tenant, stored.namespace, stored.key) == ("t1", "wm", "k1")
    assert stored.value == {"text": "user likes tea"}
    assert stored.meta == {"source": "chat"}
    assert stored.tags == ["pref", "pref"]
    assert stored.payload["tags"] == [
        "pref"
    ]  # de-duplicated in the stored payload, as the real one
    assert stored.request_id == "req-1"


def test_remember_is_idempotent_by_key(brain: SomaBrainServer, client: httpx.Client) -> None:
    first = client.post("/memory/remember", json=memory("turn-7", "hello"))
    replay = client.post("/memory/remember", json=memory("turn-7", "hello"))

    assert first.status_code == replay.status_code == 200
    assert replay.json()["ok"] is True
    assert replay.json()["coordinate"] == first.json()["coordinate"]
    assert brain.remember_count == 2
    assert [m.key for m in brain.memories()] == ["turn-7"]
    hits = recall(client, "hello").json()["results"]
    assert len(hits) == 1


def test_same_key_in_other_tenant_or_namespace_is_another_memory(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    for body in (
        memory("k", "one", tenant="t1"),
        memory("k", "two", tenant="t2"),
        memory("k", "three", tenant="t1", namespace="ltm"),
        memory("k", "one again", tenant="t1"),  # overwrites the first, in place
    ):
        assert client.post("/memory/remember", json=body).status_code == 200

    assert [(m.tenant, m.namespace, m.value["text"]) for m in brain.memories()] == [
        ("t1", "wm", "one again"),
        ("t2", "wm", "two"),
        ("t1", "ltm", "three"),
    ]
    assert [m.value["text"] for m in brain.memories(tenant="t2")] == ["two"]
    assert brain.remember_count == 4


def test_remember_validation_errors(brain: SomaBrainServer, client: httpx.Client) -> None:
    missing = client.post("/memory/remember", json={"namespace": "wm", "key": "k", "value": {}})
    assert missing.status_code == 422
    assert missing.json()["detail"] == [
        {"type": "missing", "loc": ["body", "payload", "tenant"], "msg": "Field required"}
    ]
    empty_key = client.post("/memory/remember", json=memory("", "x"))
    assert empty_key.status_code == 422
    assert empty_key.json()["detail"][0]["loc"] == ["body", "payload", "key"]
    assert empty_key.json()["detail"][0]["type"] == "string_too_short"
    not_json = client.post(
        "/memory/remember", content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.json() == {"detail": "Cannot parse request body"}
    array = client.post("/memory/remember", json=[memory("k", "x")])
    assert array.status_code == 422, "the real server answers a JSON array with 422, not 400"
    assert array.json()["detail"][0]["loc"] == ["body", "payload"]
    assert brain.memories() == []
    assert brain.remember_count == 4


# ---------------------------------------------------------------------- recall


def test_recall_scopes_to_the_tenant_header_and_ranks(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    client.post("/memory/remember", json=memory("a", "the user owns a red bicycle"))
    client.post("/memory/remember", json=memory("b", "the user owns a red car and a red bicycle"))
    client.post("/memory/remember", json=memory("c", "unrelated note"))
    client.post("/memory/remember", json=memory("d", "red bicycle owner", tenant="other"))

    response = recall(client, "red bicycle car", namespace="wm", layer="ltm")
    assert response.status_code == 200
    answer = response.json()
    assert answer["tenant"] == "t1"
    assert answer["namespace"] == "wm"
    assert answer["degraded"] is False
    assert answer["degraded_reasons"] == []
    assert [hit["content"]["key"] for hit in answer["results"]] == ["b", "a"]
    assert [hit["layer"] for hit in answer["results"]] == ["ltm", "ltm"]
    assert answer["results"][0]["score"] > answer["results"][1]["score"] > 0
    assert answer["results"][0]["content"]["text"] == "the user owns a red car and a red bicycle"
    assert answer["results"][0]["content"]["tenant"] == "t1"
    assert answer["total_results"] == 2 == answer["ltm_hits"]

    other = recall(client, "red bicycle", tenant="other", namespace="wm", layer="ltm").json()
    assert [hit["content"]["key"] for hit in other["results"]] == ["d"]
    nobody = recall(client, "red bicycle", tenant=None, namespace="wm").json()
    assert nobody["tenant"] == "standalone"
    assert nobody["results"] == []


def test_recall_without_a_namespace_searches_default_and_drops_other_namespaces(
    client: httpx.Client,
) -> None:
    """Bug 1: the real server recalls namespace "default" when none is sent."""
    client.post("/memory/remember", json=memory("ours", "tea with lemon", namespace="conversation"))

    unscoped = recall(client, "tea lemon", layer="ltm").json()
    assert unscoped["namespace"] == "default"
    assert unscoped["results"] == [], "a long-term hit of another namespace must be dropped"
    by_header = client.post(
        "/memory/recall",
        json={"query": "tea lemon", "layer": "ltm"},
        headers={"X-Tenant-ID": "t1", "X-Namespace": "conversation"},
    ).json()
    assert [hit["content"]["key"] for hit in by_header["results"]] == ["ours"]
    scoped = recall(client, "tea lemon", layer="ltm", namespace="conversation").json()
    assert [hit["content"]["key"] for hit in scoped["results"]] == ["ours"]


def test_only_value_text_is_indexed(client: httpx.Client) -> None:
    """Bug 2: the real server embeds value.text (else the key), not value.content."""
    content_only = {"tenant": "t1", "namespace": "wm", "key": "k-content"}
    client.post("/memory/remember", json={**content_only, "value": {"content": "tea with lemon"}})
    client.post("/memory/remember", json=memory("k-text", "tea with lemon"))

    hits = recall(client, "tea lemon", layer="ltm", namespace="wm").json()["results"]
    assert [hit["content"]["key"] for hit in hits] == ["k-text"]
    by_key = recall(client, "k content", layer="ltm", namespace="wm").json()["results"]
    assert [hit["content"]["key"] for hit in by_key] == ["k-content"]


def test_recall_matches_the_stored_payloads_owner_and_keeps_insertion_order_on_ties(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    """The real ``_tenant_match`` reads the stored payload: ``value.tenant`` overrides the
    request's tenant, a payload naming another tenant is dropped, and one whose value
    blanks the tenant is matched by every tenant. An overwrite moves the memory to its new
    owner in place; equal scores keep first-insertion order."""
    client.post("/memory/remember", json=memory("a", "tea"))
    foreign = memory("b", "tea")
    foreign["value"]["tenant"] = "t2"
    client.post("/memory/remember", json=foreign)
    anyone = memory("c", "tea", tenant="t3")
    anyone["value"].update(tenant="", tenant_id="")
    client.post("/memory/remember", json=anyone)
    client.post("/memory/remember", json=memory("d", "tea"))

    def keys(tenant: str) -> list[str]:
        answer = recall(client, "tea", tenant=tenant, layer="ltm", namespace="wm").json()
        assert answer["ltm_hits"] == len(answer["results"])
        return [hit["content"]["key"] for hit in answer["results"]]

    assert keys("t1") == ["a", "c", "d"]
    assert keys("t2") == ["b", "c"]
    client.post("/memory/remember", json=memory("b", "tea"))  # t1's key b, t1's payload now
    assert keys("t2") == ["c"]
    assert keys("t1") == ["a", "b", "c", "d"]
    described = client.get("/_loopback/mode").json()
    assert described["memories_by_tenant"] == {"t1": 3, "t3": 1}


def test_working_memory_returns_every_item_of_the_tenant_at_score_one(
    client: httpx.Client,
) -> None:
    """Bug 3: working memory ignores the query and the namespace, scores 1.0, layer "wm"."""
    client.post("/memory/remember", json=memory("a", "tea with lemon", namespace="conversation"))
    client.post("/memory/remember", json=memory("b", "unrelated note", namespace="elsewhere"))
    client.post("/memory/remember", json=memory("c", "tea again", tenant="other"))

    wm = recall(client, "tea lemon", layer="wm", namespace="conversation").json()
    assert [(h["content"]["key"], h["layer"], h["score"]) for h in wm["results"]] == [
        ("a", "wm", 1.0),
        ("b", "wm", 1.0),
    ]
    assert wm["wm_hits"] == 2
    both = recall(client, "tea lemon honey", namespace="conversation", top_k=2).json()
    assert both["ltm_hits"] == 1
    assert [h["layer"] for h in both["results"]] == ["wm", "wm"], (
        "working memory at 1.0 sorts ahead of long-term hits and can crowd them out"
    )


def test_recall_respects_top_k_and_layer(brain: SomaBrainServer, client: httpx.Client) -> None:
    for i in range(5):
        client.post("/memory/remember", json=memory(f"k{i}", f"coffee order {i}"))

    def ltm(**extra: Any) -> list[Any]:
        answer = recall(client, "coffee", layer="ltm", namespace="wm", **extra).json()
        return list(answer["results"])

    assert len(ltm(top_k=2)) == 2
    assert len(ltm()) == 5  # default top_k is 10
    assert len(ltm(top_k=0)) == 1  # max(1, top_k)
    wm = recall(client, "coffee", layer="wm", top_k=3).json()
    assert [hit["layer"] for hit in wm["results"]] == ["wm"] * 3
    assert recall(client, "coffee", layer="nonsense").json()["results"] == []
    assert recall(client, "coffee", layer="ltm", namespace="ltm").json()["results"] == []
    bad = client.post("/memory/recall", json={"top_k": 3})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "payload", "query"]


def test_backend_down_answers_stored_but_keeps_nothing(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    """Bug 4: with its memory backend down the real server says stored and loses the memory."""
    brain.set_backend_down(True)

    answer = client.post("/memory/remember", json=memory("k", "tea with lemon"))
    assert answer.status_code == 200
    assert answer.json()["persisted_to_ltm"] is True
    assert answer.json()["warnings"] == []
    assert brain.memories() == [], "nothing reaches the store"
    found = recall(client, "tea", namespace="wm").json()
    assert found["degraded"] is False
    assert [h["layer"] for h in found["results"]] == ["wm"], "only working memory answers"
    health = client.get("/health").json()
    assert health["status"] == "critical"
    assert health["internal_services"]["soma_fractal_memory"]["status"] == "unhealthy"
    assert health["memory_ok"] is False and health["ready"] is False
    assert health["memory_circuit_open"] is False

    brain.set_backend_down(False)
    assert brain.memories() == [], "what the backend missed stays lost"
    assert client.get("/health").json()["status"] == "healthy"


def test_health_faults_shape_the_body_like_the_real_view(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    """Bug 5: OPA or MinIO down makes the real status critical; no vector store clears ready."""
    brain.set_health_faults(unhealthy={"opa", "minio"})
    body = client.get("/health").json()
    assert body["status"] == "critical"
    assert body["infrastructure"]["opa"]["status"] == "unhealthy"
    assert body["internal_services"]["soma_fractal_memory"]["status"] == "healthy"
    assert body["memory_ok"] is True

    brain.set_health_faults(no_vector_store=True)
    body = client.get("/health").json()
    assert body["internal_services"]["soma_fractal_memory"]["details"] == {"healthy": False}
    assert body["ready"] is False
    assert client.post("/memory/remember", json=memory("k", "x")).status_code == 200
    assert [m.key for m in brain.memories()] == ["k"]


# ---------------------------------------------------------------------- health


def test_health_in_ok_mode(brain: SomaBrainServer) -> None:
    response = httpx.get(brain.base_url + "/health", headers={"X-Request-ID": "probe-1"})

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["ok"] is True
    assert body["ready"] is True
    assert body["memory_circuit_open"] is False
    assert body["memory_ok"] is True
    assert body["trace_id"] == "probe-1"
    assert body["components"]["memory"]["circuit_open"] is False
    healthz = httpx.get(brain.base_url + "/healthz")
    assert healthz.status_code == 200
    assert healthz.json()["status"] == "healthy"


def test_error_500_fails_memory_routes_and_health_reports_critical(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    brain.set_mode(FailureMode.ERROR_500)

    remember = client.post("/memory/remember", json=memory("k", "x"))
    assert remember.status_code == 500
    assert remember.json()["detail"].startswith("store failed:")
    assert recall(client, "x").status_code == 500
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "critical"
    assert health.json()["ok"] is False
    assert health.json()["ready"] is False
    assert health.json()["memory_ok"] is False
    assert client.get("/healthz").status_code == 200
    assert brain.memories() == []

    brain.set_mode(FailureMode.OK)
    assert client.post("/memory/remember", json=memory("k", "x")).status_code == 200
    assert client.get("/health").json()["status"] == "healthy"


# ---------------------------------------------------------------------- HANG, SLOW, REFUSE


def test_hang_is_detected_by_a_client_timeout(brain: SomaBrainServer) -> None:
    brain.set_mode(FailureMode.HANG)
    with httpx.Client(base_url=brain.base_url, headers=AUTH, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/memory/remember", json=memory("k", "x"))
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/memory/recall", json={"query": "x"})
        with pytest.raises(httpx.ReadTimeout):
            impatient.get("/health")
        assert impatient.get("/healthz").status_code == 200  # liveness only
    assert brain.memories() == []


def test_hanging_request_is_answered_after_the_mode_changes(brain: SomaBrainServer) -> None:
    brain.set_mode(FailureMode.HANG)
    with ThreadPoolExecutor(1) as pool, httpx.Client(headers=AUTH, timeout=10.0) as patient:
        future = pool.submit(
            patient.post, brain.base_url + "/memory/remember", json=memory("k", "late")
        )
        assert brain.wait_for_requests(1)
        time.sleep(0.2)
        assert not future.done()
        brain.set_mode(FailureMode.OK)
        assert future.result(5).status_code == 200
    assert [m.key for m in brain.memories()] == ["k"]


def test_slow_delays_memory_routes_and_health(brain: SomaBrainServer, client: httpx.Client) -> None:
    brain.set_mode(FailureMode.SLOW, delay_seconds=0.4)
    assert brain.delay_seconds == 0.4
    calls: list[Callable[[], httpx.Response]] = [
        lambda: client.post("/memory/remember", json=memory("k", "x")),
        lambda: recall(client, "x"),
        lambda: client.get("/health"),
    ]
    for call in calls:
        started = time.monotonic()
        assert call().status_code == 200
        assert time.monotonic() - started >= 0.35


def test_refuse_closes_the_port_and_reopens_it(brain: SomaBrainServer) -> None:
    url = brain.base_url
    brain.set_mode(FailureMode.REFUSE)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=2.0)
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + "/memory/remember", json=memory("k", "x"), headers=AUTH, timeout=2.0)

    brain.set_mode(FailureMode.OK)
    assert brain.base_url == url
    assert httpx.get(url + "/health", timeout=2.0).json()["ready"] is True
    assert (
        httpx.post(url + "/memory/remember", json=memory("k", "x"), headers=AUTH).status_code == 200
    )


def test_connections_are_kept_alive_until_refuse_ends_them(brain: SomaBrainServer) -> None:
    url = f"{brain.base_url}/health"
    with httpx.Client(timeout=2) as pooled:
        first = pooled.get(url)
        assert first.headers.get("connection", "").lower() != "close"
        assert pooled.get(url).status_code == 200
        assert brain.open_connections == 1, "the second request opened a connection"

        brain.set_mode(FailureMode.REFUSE)
        assert brain.open_connections == 0
        with pytest.raises(httpx.ConnectError):
            pooled.get(url)


def test_revert_after_seconds_goes_back_to_ok(brain: SomaBrainServer) -> None:
    brain.set_mode(FailureMode.REFUSE, revert_after_seconds=3.0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(brain.base_url + "/healthz", timeout=2.0)
    deadline = time.monotonic() + 15
    while brain.mode is not FailureMode.OK and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(brain.base_url + "/healthz", timeout=2.0).status_code == 200


def test_llm_only_modes_are_rejected(brain: SomaBrainServer) -> None:
    with pytest.raises(ValueError, match="does not implement"):
        brain.set_mode(FailureMode.RATE_LIMITED)
    assert brain.mode is FailureMode.OK


# ---------------------------------------------------------------------- auth


def test_memory_routes_require_the_bearer_token(brain: SomaBrainServer) -> None:
    url = brain.base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.post(url + "/memory/remember", json=memory("k", "x"), headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "Unauthorized"}
        assert (
            httpx.post(url + "/memory/recall", json={"query": "x"}, headers=headers).status_code
            == 401
        )
    # Authentication comes before validation, as in Django Ninja.
    assert httpx.post(url + "/memory/remember", json={}).status_code == 401
    assert httpx.get(url + "/health").status_code == 200
    assert brain.memories() == []
    assert brain.remember_count == 4
    lower = httpx.post(
        url + "/memory/remember",
        json=memory("k", "x"),
        headers={"Authorization": f"bearer {TOKEN}"},
    )
    assert lower.status_code == 401, "the real server refuses a lowercase bearer scheme"
    assert lower.json() == {"detail": "missing bearer token"}


def test_no_token_means_no_auth() -> None:
    with SomaBrainServer(name="open") as brain:
        response = httpx.post(brain.base_url + "/memory/remember", json=memory("k", "x"))
        assert response.status_code == 200
        assert brain.token is None
    assert _server_threads() == []


# ---------------------------------------------------------------------- queued for replay


def test_queue_for_replay_answers_with_the_real_warning(
    brain: SomaBrainServer, client: httpx.Client
) -> None:
    brain.set_queue_for_replay(True)

    response = client.post("/memory/remember", json=memory("k1", "remember me later"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True
    assert answer["warnings"] == [QUEUED_FOR_REPLAY_WARNING]
    assert answer["warnings"] == ["memory-backend-unavailable:queued-for-replay"]
    assert answer["persisted_to_ltm"] is False
    assert answer["coordinate"] is None
    assert brain.memories() == []
    assert [m.key for m in brain.queued()] == ["k1"]

    degraded = recall(client, "remember").json()
    assert degraded["degraded"] is True
    assert degraded["degraded_reasons"] == ["ltm: Memory service unavailable (circuit open)"]
    assert [hit["layer"] for hit in degraded["results"]] == ["wm"]
    ltm_only = recall(client, "remember", layer="ltm")
    assert ltm_only.status_code == 503
    assert ltm_only.json() == {"detail": "Memory service unavailable (circuit open)"}
    health = client.get("/health").json()
    assert health["memory_circuit_open"] is True
    assert health["ready"] is False
    assert health["memory_degraded"] is True

    client.post("/memory/remember", json=memory("k1", "remember me later"))  # a retry, queued again
    brain.set_queue_for_replay(False)
    assert [m.key for m in brain.memories()] == ["k1"]  # replayed once
    assert brain.queued() == []
    assert client.get("/health").json()["ready"] is True
    assert recall(client, "remember").json()["degraded"] is False


def test_queue_for_replay_wins_over_error_500(brain: SomaBrainServer, client: httpx.Client) -> None:
    brain.set_mode(FailureMode.ERROR_500)
    brain.set_queue_for_replay(True)
    response = client.post("/memory/remember", json=memory("k", "x"))
    assert response.status_code == 200
    assert response.json()["warnings"] == [QUEUED_FOR_REPLAY_WARNING]
    health = client.get("/health").json()
    assert (health["status"], health["memory_circuit_open"]) == ("critical", True)


# ---------------------------------------------------------------------- bookkeeping


def test_requests_are_recorded(brain: SomaBrainServer, client: httpx.Client) -> None:
    client.post("/memory/remember", json=memory("k", "x"), headers={"X-Request-ID": "r-9"})
    recall(client, "x")
    client.get("/health")
    client.get("/_loopback/mode")  # control endpoints are not recorded

    requests = brain.requests
    assert [r.path for r in requests] == ["/memory/remember", "/memory/recall", "/health"]
    assert requests[0].headers["x-request-id"] == "r-9"
    assert requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert requests[0].body is not None and requests[0].body["key"] == "k"
    assert requests[1].headers["x-tenant-id"] == "t1"
    assert all(r.mode is FailureMode.OK for r in requests)
    assert brain.request_count == 3
    brain.reset_requests()
    assert brain.requests == [] and brain.remember_count == 0


def test_api_prefix_aliases(brain: SomaBrainServer, client: httpx.Client) -> None:
    assert client.post("/api/memory/remember", json=memory("k", "alias")).status_code == 200
    assert (
        len(
            client.post(
                "/api/memory/recall", json={"query": "alias"}, headers={"X-Tenant-ID": "t1"}
            ).json()["results"]
        )
        == 1
    )


def test_control_endpoint(brain: SomaBrainServer, client: httpx.Client) -> None:
    answer = client.post("/_loopback/mode", json={"mode": "error_500", "queue_for_replay": True})
    assert answer.status_code == 200
    assert answer.json()["mode"] == "error_500"
    assert answer.json()["queue_for_replay"] is True
    assert brain.mode is FailureMode.ERROR_500 and brain.queue_for_replay
    assert client.post("/_loopback/mode", json={"mode": "rate_limited"}).status_code == 400
    assert client.post("/_loopback/mode", json={"mode": "refuse"}).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(brain.base_url + "/healthz", timeout=2.0)


def test_lifecycle() -> None:
    brain = SomaBrainServer(name="life")
    with pytest.raises(RuntimeError):
        _ = brain.port
    brain.set_mode(FailureMode.ERROR_500)  # before start: kept
    with brain:
        with pytest.raises(RuntimeError, match="already running"):
            brain.start()
        assert httpx.get(brain.base_url + "/health").json()["status"] == "critical"
        brain.set_mode(FailureMode.HANG)
    brain.stop()  # idempotent; the hanging mode did not block the stop
    assert _server_threads() == []
    with pytest.raises(ValueError):
        SomaBrainServer(port=70000)
    with pytest.raises(ValueError):
        SomaBrainServer(token=" ")


def test_stop_drops_a_hanging_request() -> None:
    brain = SomaBrainServer(name="drop")
    brain.start()
    brain.set_mode(FailureMode.HANG)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.get, brain.base_url + "/health", timeout=10.0)
        assert brain.wait_for_requests(1)
        brain.stop()
        with pytest.raises(httpx.HTTPError):
            future.result(5)
    assert _server_threads() == []


def test_stored_memories_are_left_out_of_garbage_collections(
    brain: SomaBrainServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real service keeps memories in its store; this one keeps them in the heap, where
    a full collection walked all of them (0.1-0.5 s pauses at 50,000 memories, stalling
    recalls). Every ``FREEZE_EVERY`` new memories they are frozen out of collections."""
    monkeypatch.setattr(somabrain_server, "FREEZE_EVERY", 3)
    gc.unfreeze()
    try:
        for n in range(2):
            client.post("/memory/remember", json=memory(f"k{n}", "tea"))
        assert gc.get_freeze_count() == 0
        client.post("/memory/remember", json=memory("k1", "tea again"))  # an overwrite
        assert gc.get_freeze_count() == 0
        client.post("/memory/remember", json=memory("k2", "tea"))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
