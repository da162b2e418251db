"""SandboxGateway's edges that a healthy sandbox never shows: stubbed at the transport."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from payments.gateways.base import ChargeRequest, GatewayLookupError, OutcomeKind
from payments.gateways.sandbox import SandboxGateway

MakeRequest = Callable[..., ChargeRequest]
Handler = Callable[[httpx.Request], httpx.Response]


def stubbed(handler: Handler, **options: Any) -> SandboxGateway:
    return SandboxGateway(base_url="http://sandbox.test", transport=httpx.MockTransport(handler), **options)


def test_it_posts_the_contracts_body_with_the_idempotency_key(make_request: MakeRequest):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "ch_1", "status": "succeeded"})

    request = make_request(amount=Decimal("125.5"))
    stubbed(handler).charge(request)

    [sent] = seen
    assert sent.method == "POST"
    assert sent.url == "http://sandbox.test/v1/charges"
    assert sent.headers["Idempotency-Key"] == request.idempotency_key
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == {
        "amount": "125.50",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "metadata": {"payment_id": request.payment_id},
    }


def test_it_sends_nothing_for_an_amount_it_would_have_to_round(make_request: MakeRequest):
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    outcome = stubbed(handler).charge(make_request(amount=Decimal("0.5"), currency="JPY"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == "gateway_rejected"


def test_a_429_is_retryable_with_retry_after(make_request: MakeRequest):
    outcome = stubbed(lambda r: httpx.Response(429, headers={"Retry-After": "3"})).charge(make_request())

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.retry_after_seconds == 3.0


def test_a_2xx_that_is_not_json_is_unknown(make_request: MakeRequest):
    outcome = stubbed(lambda r: httpx.Response(201, text="<html>ok</html>")).charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN


def test_a_bug_inside_the_adapter_is_unknown_not_an_exception(make_request: MakeRequest, monkeypatch):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"id": "ch_1", "status": "succeeded"})

    gateway = stubbed(handler)
    monkeypatch.setattr("payments.gateways.classification.classify_http_response", lambda *a: 1 / 0, raising=True)

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.needs_operator


def test_charge_many_isolates_failures_and_keeps_order(make_request: MakeRequest):
    def handler(request: httpx.Request) -> httpx.Response:
        amount = json.loads(request.content)["amount"]
        if amount == "2.00":
            raise httpx.ReadTimeout("lost", request=request)
        if amount == "3.00":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json={"id": f"ch_{amount}", "status": "succeeded"})

    requests = [make_request(amount=Decimal(f"{i}.00")) for i in range(1, 6)]

    outcomes = stubbed(handler, concurrency=4).charge_many(requests)

    assert [o.kind for o in outcomes] == [
        OutcomeKind.SUCCEEDED,
        OutcomeKind.UNKNOWN,
        OutcomeKind.RETRYABLE,
        OutcomeKind.SUCCEEDED,
        OutcomeKind.SUCCEEDED,
    ]
    assert outcomes[3].reference == "ch_4.00"


def test_charge_many_of_nothing_is_nothing():
    assert stubbed(lambda r: httpx.Response(500)).charge_many([]) == []


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"unexpected": []}),
        httpx.Response(200, json={"results": [{"id": "ch_1"}]}),
        httpx.Response(
            200,
            json={
                "results": [
                    {"id": "ch_1", "status": "succeeded", "idempotency_key": "k", "amount": "x", "currency": "EUR"}
                ]
            },
        ),
    ],
    ids=["500", "not-json", "no-results", "incomplete-charge", "bad-amount"],
)
def test_find_charge_raises_when_the_answer_proves_nothing(response):
    with pytest.raises(GatewayLookupError):
        stubbed(lambda r: response).find_charge("k")


def test_find_charge_raises_on_a_timeout():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(GatewayLookupError):
        stubbed(handler).find_charge("k")


def test_find_charge_asks_by_idempotency_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": []})

    assert stubbed(handler).find_charge("pay_1:2 &x") is None
    assert seen[0].url.path == "/v1/charges"
    assert seen[0].url.params["idempotency_key"] == "pay_1:2 &x"


# --- one client per process ---------------------------------------------------------------------------------


def _child_uses_its_own_client(gateway: SandboxGateway, parent_client_id: int, queue: Any) -> None:
    client = gateway._client.get()
    queue.put((id(client) != parent_client_id, client.is_closed))


def test_a_forked_child_builds_its_own_client():
    # given a gateway whose client the parent (a Celery prefork master, say) already created
    gateway = SandboxGateway(base_url="http://sandbox.test")
    parent_client = gateway._client.get()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    child = context.Process(target=_child_uses_its_own_client, args=(gateway, id(parent_client), queue))
    child.start()
    child.join(10)

    assert child.exitcode == 0
    assert queue.get(timeout=5) == (True, False)
    # and the parent's client is untouched
    assert gateway._client.get() is parent_client
    assert not parent_client.is_closed
    gateway.close()


def test_close_releases_and_a_later_call_reconnects(make_request: MakeRequest):
    gateway = stubbed(lambda r: httpx.Response(201, json={"id": "ch_1", "status": "succeeded"}))
    first = gateway._client.get()

    gateway.close()

    assert first.is_closed
    assert gateway.charge(make_request()).kind is OutcomeKind.SUCCEEDED
