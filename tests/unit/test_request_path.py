"""Every request takes one path (frontend/request_path.py): one Exchange, X-Request-Id on every
response, and one JSON error answer whether a direct route, a Flask view or werkzeug's
routing raised it. The app runs in-process with the Flask test client; no broker."""
from __future__ import annotations

import logging

import pytest

from mxserve.common.config import load_config
from mxserve.common.errors import InvalidInput
from mxserve.frontend import request_context
from mxserve.frontend.app import CustomEndpoint, create_app


def _raise_invalid():
    raise InvalidInput("the item is not for sale")


def _crash():
    raise RuntimeError("secret internals")


@pytest.fixture
def client():
    endpoints = [
        CustomEndpoint("/shop/invalid", "get", {"operationId": "invalid"}, _raise_invalid),
        CustomEndpoint("/shop/crash", "get", {"operationId": "crash"}, _crash),
        CustomEndpoint("/shop/{item}/predict", "post", {"operationId": "item"},
                       lambda item: {"item": item}),
    ]
    config = load_config({"broker_frontend": "ipc:///nonexistent",
                          "frontend_queue_timeout_s": 5.0}, env={})
    yield create_app(config, endpoints).test_client()
    request_context.set_context(0.0, None)


def _assert_error(response, status, error_type):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    body = response.get_json()
    assert body["code"] == status and body["type"] == error_type
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def test_an_unknown_route_is_not_found_as_json(client):
    _assert_error(client.get("/no/such/route"), 404, "NotFound")


def test_the_predict_route_has_a_405_for_other_methods_without_a_stub_view(client):
    body = _assert_error(client.get("/digits/predict"), 405, "MethodNotAllowed")
    assert "method" in body["message"].lower()


def test_options_is_answered_with_the_allowed_methods(client):
    response = client.options("/digits/predict")
    assert response.status_code == 200 and "POST" in response.headers["Allow"]
    assert response.headers["X-Request-Id"]


def test_a_views_own_error_gets_its_status_and_the_clients_request_id(client):
    response = client.get("/shop/invalid", headers={"X-Request-Id": "order-17"})
    body = _assert_error(response, 400, "InvalidInput")
    assert body["request_id"] == "order-17" and body["message"] == "the item is not for sale"


def test_our_fault_is_500_logged_with_the_request_id_and_never_sent(client, caplog):
    with caplog.at_level(logging.ERROR, logger="frontend"):
        response = client.get("/shop/crash")
    body = _assert_error(response, 500, "InternalServerError")
    assert "secret internals" not in response.get_data(as_text=True)
    assert body["request_id"] in body["message"]
    assert any("secret internals" in (r.exc_text or "") and body["request_id"] in r.getMessage()
               for r in caplog.records)


def test_a_custom_endpoint_wins_over_predict_for_its_own_path(client):
    response = client.post("/shop/ball/predict")
    assert response.status_code == 200 and response.get_json() == {"item": "ball"}
    assert response.headers["X-Request-Id"]


def test_a_prediction_that_waited_too_long_for_a_thread_is_shed_with_retry_after(client):
    request_context.set_context(30.0, None)
    response = client.post("/digits/predict", data={"data": "x"})
    body = _assert_error(response, 503, "ServiceUnavailable")
    assert response.headers["Retry-After"] == "1" and "waited 30.0s" in body["message"]


def test_a_late_health_check_is_not_shed(client):
    request_context.set_context(30.0, None)
    response = client.get("/ping")
    assert response.status_code == 503  # no broker here; but its own answer, not a shed one
    assert response.get_json()["health"] == "unhealthy!"
