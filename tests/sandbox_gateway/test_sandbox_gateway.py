"""The sandbox gateway, black-box over HTTP against the real process (see docs/sandbox-gateway.md)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.sandbox_process import SandboxProcess

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]

CHARGE_FIELDS = {
    "id",
    "object",
    "status",
    "amount",
    "currency",
    "payment_id",
    "idempotency_key",
    "created",
    "failure_code",
    "failure_message",
    "metadata",
}
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z")


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


def charge_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": "125.50",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "metadata": {"payment_id": str(uuid.uuid4())},
    }
    body.update(overrides)
    return body


def post_charge(http: httpx.Client, key: str, body: dict[str, Any]) -> httpx.Response:
    return http.post("/v1/charges", json=body, headers={"Idempotency-Key": key})


def charges_by_key(http: httpx.Client, key: str) -> list[dict[str, Any]]:
    response = http.get("/v1/charges", params={"idempotency_key": key})
    assert response.status_code == 200
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def put_faults(http: httpx.Client, **faults: float) -> None:
    response = http.put("/v1/faults", json=faults)
    assert response.status_code == 200, response.text


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem.keys() >= PROBLEM_FIELDS
    assert problem["status"] == status
    assert problem["code"] == code


# --- charges ---------------------------------------------------------------------------------


def test_it_creates_a_charge(client: httpx.Client) -> None:
    # given a new idempotency key
    key, body = new_key(), charge_body()

    # when the charge is posted
    response = post_charge(client, key, body)

    # then it is created and succeeded
    assert response.status_code == 201
    charge = response.json()
    assert charge.keys() == CHARGE_FIELDS
    assert charge["id"].startswith("ch_")
    assert charge["object"] == "charge"
    assert charge["status"] == "succeeded"
    assert charge["amount"] == "125.50"
    assert charge["currency"] == "EUR"
    assert charge["payment_id"] == body["metadata"]["payment_id"]
    assert charge["idempotency_key"] == key
    assert RFC3339_UTC.fullmatch(charge["created"])
    assert charge["failure_code"] is None
    assert charge["failure_message"] is None
    assert response.headers["Location"] == f"/v1/charges/{charge['id']}"
    assert client.get(f"/v1/charges/{charge['id']}").json() == charge


def test_it_replays_the_same_key_without_a_second_charge(client: httpx.Client) -> None:
    # given a charge
    key, body = new_key(), charge_body()
    first = post_charge(client, key, body)
    assert first.status_code == 201

    # when the same request is sent again
    again = post_charge(client, key, body)

    # then the same charge is answered with 200, and the ledger still holds one
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [c["id"] for c in charges_by_key(client, key)] == [first.json()["id"]]


def test_it_treats_an_equal_amount_written_differently_as_the_same_request(client: httpx.Client) -> None:
    key = new_key()
    first = post_charge(client, key, charge_body(amount="10.50", metadata={"payment_id": "p-eq"}))
    again = post_charge(client, key, charge_body(amount="10.5", metadata={"payment_id": "p-eq"}))
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["amount"] == "10.50"


@pytest.mark.parametrize(
    "change",
    [
        {"amount": "125.51"},
        {"currency": "USD"},
        {"payment_method": "pm_card_other"},
        {"metadata": {"payment_id": "another-payment"}},
    ],
    ids=["amount", "currency", "payment_method", "payment_id"],
)
def test_it_rejects_the_same_key_with_a_different_body(client: httpx.Client, change: dict[str, Any]) -> None:
    # given a charge
    key, body = new_key(), charge_body()
    first = post_charge(client, key, body)

    # when the key is reused with one field changed
    response = post_charge(client, key, body | change)

    # then 422 idempotency_key_reused, and still only the first charge
    assert_problem(response, 422, "idempotency_key_reused")
    assert [c["id"] for c in charges_by_key(client, key)] == [first.json()["id"]]


def test_it_makes_one_charge_for_twenty_concurrent_requests_with_one_key(sandbox: SandboxProcess) -> None:
    # given twenty clients ready to send the same request at the same moment
    key, body = new_key(), charge_body()
    barrier = threading.Barrier(20)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=sandbox.url, timeout=10.0) as http:
            http.get("/healthz")  # connect first, so the POSTs really overlap
            barrier.wait()
            return post_charge(http, key, body)

    # when they all post
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))

    # then exactly one created it, every one got the same charge, and the ledger holds one
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    with httpx.Client(base_url=sandbox.url) as http:
        assert len(charges_by_key(http, key)) == 1


def test_it_declines_a_payment_method_ending_in_decline(client: httpx.Client) -> None:
    # given a payment method token ending in _decline
    key, body = new_key(), charge_body(payment_method="pm_card_decline")

    # when it is charged
    response = post_charge(client, key, body)

    # then a declined charge is created and recorded in the ledger
    assert response.status_code == 201
    charge = response.json()
    assert charge["status"] == "declined"
    assert charge["failure_code"] == "card_declined"
    assert charge["failure_message"] == "The payment method was declined."
    assert charges_by_key(client, key) == [charge]
    # and a replay answers the same decline rather than trying again
    replay = post_charge(client, key, body)
    assert replay.status_code == 200
    assert replay.json() == charge


def test_it_finds_charges_by_key_and_by_payment_id_oldest_first(client: httpx.Client) -> None:
    # given two charges for one payment (e.g. a retry after a decline) and one for another
    payment_id = str(uuid.uuid4())
    first_key, second_key = new_key(), new_key()
    first = post_charge(
        client, first_key, charge_body(payment_method="pm_x_decline", metadata={"payment_id": payment_id})
    )
    second = post_charge(client, second_key, charge_body(metadata={"payment_id": payment_id}))
    post_charge(client, new_key(), charge_body())

    # then by payment id both are found, oldest first; by key exactly one
    by_payment = client.get("/v1/charges", params={"payment_id": payment_id}).json()["results"]
    assert [c["id"] for c in by_payment] == [first.json()["id"], second.json()["id"]]
    assert charges_by_key(client, second_key) == [second.json()]
    assert charges_by_key(client, new_key()) == []
    assert client.get("/v1/charges", params={"payment_id": "no-such-payment"}).json() == {"results": []}


def test_it_answers_404_for_an_unknown_charge_id(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/charges/ch_doesnotexist"), 404, "not_found")


def test_it_requires_a_filter_to_list_charges(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/charges"), 400, "filter_required")


def test_it_requires_an_idempotency_key(client: httpx.Client) -> None:
    response = client.post("/v1/charges", json=charge_body())
    assert_problem(response, 400, "idempotency_key_required")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"amount": "0"}, "invalid_amount"),
        ({"amount": "0.00"}, "invalid_amount"),
        ({"amount": "-5.00"}, "invalid_amount"),
        ({"amount": 125.5}, "invalid_amount"),
        ({"amount": "1e3"}, "invalid_amount"),
        ({"amount": "abc"}, "invalid_amount"),
        ({"amount": None}, "invalid_amount"),
        ({"currency": "eur"}, "invalid_currency"),
        ({"currency": "EURO"}, "invalid_currency"),
        ({"currency": 978}, "invalid_currency"),
        ({"payment_method": ""}, "invalid_payment_method"),
        ({"payment_method": "   "}, "invalid_payment_method"),
        ({"payment_method": 42}, "invalid_payment_method"),
        ({"metadata": ["payment_id"]}, "invalid_metadata"),
        ({"metadata": {"payment_id": 7}}, "invalid_metadata"),
    ],
)
def test_it_rejects_an_invalid_charge_body(client: httpx.Client, change: dict[str, Any], code: str) -> None:
    key = new_key()
    assert_problem(post_charge(client, key, charge_body(**change)), 400, code)
    assert charges_by_key(client, key) == []


def test_it_rejects_a_body_that_is_not_json(client: httpx.Client) -> None:
    response = client.post("/v1/charges", content=b"amount=1", headers={"Idempotency-Key": new_key()})
    assert_problem(response, 400, "malformed_request")


def test_it_never_echoes_the_payment_method_in_an_error(client: httpx.Client) -> None:
    response = post_charge(client, new_key(), charge_body(payment_method="pm_secret_token", currency="x"))
    assert response.status_code == 400
    assert "pm_secret_token" not in response.text


# --- faults ----------------------------------------------------------------------------------


def test_it_answers_503_without_charging_under_error_rate(client: httpx.Client) -> None:
    # given every charge request fails
    put_faults(client, error_rate=1.0)
    key = new_key()

    # when a charge is posted
    response = post_charge(client, key, charge_body())

    # then 503 gateway_unavailable and no charge (lookups are never faulted)
    assert_problem(response, 503, "gateway_unavailable")
    assert charges_by_key(client, key) == []


def test_it_hangs_without_charging_under_timeout_rate(client: httpx.Client) -> None:
    # given every charge request hangs
    put_faults(client, timeout_rate=1.0)
    key = new_key()

    # when a client with a short timeout posts a charge
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/charges", json=charge_body(), headers={"Idempotency-Key": key}, timeout=0.5)

    # then nothing was charged
    assert charges_by_key(client, key) == []


def test_it_charges_then_drops_the_connection_under_drop_response_rate(sandbox: SandboxProcess) -> None:
    # given every charge response is dropped
    key, body = new_key(), charge_body()
    with httpx.Client(base_url=sandbox.url, timeout=5.0) as http:
        put_faults(http, drop_response_rate=1.0)

        # when a charge is posted, the client sees a dropped connection, not a response
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            post_charge(http, key, body)

        # then a lookup shows the charge was made, exactly once
        charges = charges_by_key(http, key)
        assert len(charges) == 1

        # and a replay is dropped too, still without a second charge
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            post_charge(http, key, body)
        assert charges_by_key(http, key) == charges

        # once the fault is off, the replay answers the same charge
        http.delete("/v1/faults")
        replay = post_charge(http, key, body)
        assert replay.status_code == 200
        assert replay.json()["id"] == charges[0]["id"]


def test_it_delays_charges_under_latency(client: httpx.Client) -> None:
    put_faults(client, latency_ms=200)

    started = time.monotonic()
    response = post_charge(client, new_key(), charge_body())
    elapsed = time.monotonic() - started

    assert response.status_code == 201
    assert elapsed >= 0.2  # a lower bound only: a busy machine may be slower, never faster


def test_it_never_faults_lookups(client: httpx.Client) -> None:
    put_faults(client, latency_ms=5000, error_rate=1.0, timeout_rate=1.0, drop_response_rate=1.0)

    started = time.monotonic()
    assert client.get("/v1/charges", params={"idempotency_key": new_key()}).status_code == 200
    assert client.get("/v1/charges", params={"payment_id": "p"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert time.monotonic() - started < 5.0


def test_it_shows_the_faults_it_was_given(client: httpx.Client) -> None:
    # a PUT replaces the whole setting: fields left out go back to zero
    put_faults(client, latency_ms=50, error_rate=0.25)
    assert client.get("/v1/faults").json() == {
        "latency_ms": 50,
        "error_rate": 0.25,
        "timeout_rate": 0.0,
        "drop_response_rate": 0.0,
    }
    put_faults(client, timeout_rate=0.5)
    assert client.get("/v1/faults").json() == {
        "latency_ms": 0,
        "error_rate": 0.0,
        "timeout_rate": 0.5,
        "drop_response_rate": 0.0,
    }
    # a PATCH changes only the fields given
    assert client.patch("/v1/faults", json={"drop_response_rate": 0.1}).status_code == 200
    assert client.get("/v1/faults").json()["timeout_rate"] == 0.5
    assert client.get("/v1/faults").json()["drop_response_rate"] == 0.1
    # a DELETE switches every fault off
    assert client.delete("/v1/faults").status_code == 200
    assert client.get("/v1/faults").json() == {
        "latency_ms": 0,
        "error_rate": 0.0,
        "timeout_rate": 0.0,
        "drop_response_rate": 0.0,
    }


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": 1.5},
        {"timeout_rate": -0.1},
        {"drop_response_rate": 2},
        {"latency_ms": -1},
        {"latency_ms": 10_000_000},
        {"error_rate": "0.5"},
        {"error_rate": True},
        {"error_rate": None},
        {"nonsense_rate": 0.1},
        [0.5],
    ],
)
def test_it_rejects_invalid_fault_values(client: httpx.Client, faults: Any) -> None:
    put_faults(client, latency_ms=7)

    response = client.put("/v1/faults", json=faults)

    assert_problem(response, 400, "invalid_faults")
    assert client.get("/v1/faults").json()["latency_ms"] == 7  # unchanged


# --- operations ------------------------------------------------------------------------------


def test_it_answers_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_it_counts_charges_in_stats(client: httpx.Client) -> None:
    before = client.get("/v1/stats").json()
    post_charge(client, new_key(), charge_body())
    post_charge(client, new_key(), charge_body(payment_method="pm_decline"))
    after = client.get("/v1/stats").json()

    assert after["total"] - before["total"] == 2
    assert after["succeeded"] - before["succeeded"] == 1
    assert after["declined"] - before["declined"] == 1


def test_it_keeps_its_ledger_across_a_restart(make_sandbox: Callable[..., SandboxProcess]) -> None:
    # given a charge on a gateway
    gateway = make_sandbox()
    key, body = new_key(), charge_body()
    with httpx.Client(base_url=gateway.url) as http:
        created = post_charge(http, key, body).json()

    # when the process is stopped (cleanly) and started again on the same data dir
    assert gateway.stop() == 0
    gateway.start()

    # then the charge is still found by key, and a replay answers the same charge
    with httpx.Client(base_url=gateway.url) as http:
        assert charges_by_key(http, key) == [created]
        replay = post_charge(http, key, body)
        assert replay.status_code == 200
        assert replay.json()["id"] == created["id"]
        assert http.get("/v1/stats").json()["total"] == 1


def test_it_takes_its_initial_faults_from_the_environment(make_sandbox: Callable[..., SandboxProcess]) -> None:
    gateway = make_sandbox(GATEWAY_FAULTS='{"error_rate": 1, "latency_ms": 10}', GATEWAY_FAULT_SEED="42")
    with httpx.Client(base_url=gateway.url) as http:
        assert http.get("/v1/faults").json() == {
            "latency_ms": 10,
            "error_rate": 1.0,
            "timeout_rate": 0.0,
            "drop_response_rate": 0.0,
        }
        assert_problem(post_charge(http, new_key(), charge_body()), 503, "gateway_unavailable")


def test_it_resets_the_ledger_only_when_confirmed(make_sandbox: Callable[..., SandboxProcess]) -> None:
    gateway = make_sandbox()
    with httpx.Client(base_url=gateway.url) as http:
        key = new_key()
        post_charge(http, key, charge_body())

        assert_problem(http.post("/v1/admin/reset"), 400, "confirmation_required")
        assert len(charges_by_key(http, key)) == 1

        assert http.post("/v1/admin/reset", params={"confirm": "yes"}).json() == {"deleted": 1}
        assert charges_by_key(http, key) == []
        assert http.get("/v1/stats").json()["total"] == 0
