"""The API foundation over real HTTP: auth, scopes, the error envelope, Idempotency-Key,
throttling and the OpenAPI description, exercised through small test-only views."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import time_machine
from django.core.cache import cache
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.auth import request_api_key
from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import IDEMPOTENCY_HEADER, ApiError
from billing_portal.api.models import IdempotencyRecord
from billing_portal.api.schema import error_responses
from billing_portal.api.tasks import idempotency_records_prune_task
from ledger.errors import HoldNotOpen
from plans.apikeys import api_key_authenticate, api_key_create, api_key_revoke
from plans.models import ApiKey, Meter

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.billing_portal.api.api_test_urls"),
]

# --- test-only views ------------------------------------------------------------------
# Each run of a POST view creates a Meter row, so tests count how often a view ran.


def _meter_created(code: str) -> Meter:
    suffix = uuid.uuid4().hex[:8]
    return Meter.objects.create(
        code=f"{code}-{suffix}", event_name=f"{code}.{suffix}", aggregation="sum", unit="u"
    )


class LimitsIn(serializers.Serializer):
    max = serializers.IntegerField(min_value=1)


class ThingIn(serializers.Serializer):
    code = serializers.SlugField(max_length=40)
    limits = LimitsIn(required=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=3), required=False)


class ThingOut(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    created_at = serializers.DateTimeField()


class ReadView(BaseApiView):
    required_scope = "read"

    def get(self, request: Request) -> Response:
        return Response(
            {
                "key": request_api_key(request).name,
                "user": str(request.user),
                "authenticated": request.user.is_authenticated,
            }
        )


class ThingsView(BaseApiView):
    required_scope = {"GET": "read", "POST": "write"}

    def get(self, request: Request) -> Response:
        return Response({"count": Meter.objects.count()})

    @extend_schema(request=ThingIn, responses={201: ThingOut, **error_responses(400, 409)})
    def post(self, request: Request) -> Response:
        given = ThingIn(data=request.data)
        given.is_valid(raise_exception=True)
        meter = _meter_created(given.validated_data["code"])
        return Response(ThingOut(meter).data, status=201)


class RefusingView(BaseApiView):
    required_scope = "write"

    def post(self, request: Request) -> Response:
        _meter_created("refused")
        raise ApiError(409, "thing_exists", "A thing with this code exists: pick another.", "code")


class FailingOnceView(BaseApiView):
    required_scope = "write"

    def post(self, request: Request) -> Response:
        _meter_created("attempt")
        if Meter.objects.count() == 1:
            raise RuntimeError("the first attempt fails")
        return Response({"attempts": Meter.objects.count()}, status=201)


SLOW_STARTED = threading.Event()
SLOW_RELEASE = threading.Event()


class SlowView(BaseApiView):
    required_scope = "write"

    def post(self, request: Request) -> Response:
        SLOW_STARTED.set()
        SLOW_RELEASE.wait(timeout=10)
        return Response({"id": _meter_created("slow").pk}, status=201)


class LedgerRefusalView(BaseApiView):
    required_scope = "read"

    def get(self, request: Request) -> Response:
        raise HoldNotOpen("hold 7 is already captured: create a new hold", param="hold")


class MissingObjectView(BaseApiView):
    required_scope = "read"

    def get(self, request: Request, pk: int) -> Response:
        return Response({"id": get_object_or_404(Meter, pk=pk).pk})


class UnscopedView(BaseApiView):
    def get(self, request: Request) -> Response:
        return Response({})


urlpatterns = [
    path("api/test/read", ReadView.as_view()),
    path("api/test/things", ThingsView.as_view()),
    path("api/test/refusing", RefusingView.as_view()),
    path("api/test/failing-once", FailingOnceView.as_view()),
    path("api/test/slow", SlowView.as_view()),
    path("api/test/ledger", LedgerRefusalView.as_view()),
    path("api/test/meters/<int:pk>", MissingObjectView.as_view()),
    path("api/test/unscoped", UnscopedView.as_view()),
    path("api/schema/", SpectacularAPIView.as_view()),
]

# --- helpers --------------------------------------------------------------------------

Call = Callable[..., requests.Response]


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def secret() -> str:
    return api_key_create(name="tests")[1]


@pytest.fixture
def call(live_server: Any) -> Call:
    def _call(
        method: str,
        url: str,
        *,
        secret: str | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        return requests.request(
            method, live_server.url + url, headers=headers, timeout=15, **kwargs
        )

    return _call


def _error(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "param"}
    return body["error"]


# --- authentication and scopes --------------------------------------------------------


class TestAuthentication:
    def test_it_answers_401_without_a_key(self, call: Call) -> None:
        response = call("GET", "/api/test/read")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        error = _error(response)
        assert error["type"] == "authentication_error"
        assert error["code"] == "api_key_required"
        assert "Authorization: Bearer" in error["message"]

    @pytest.mark.parametrize(
        "header", ["Bearer sk_0123456789ab_nope", "Bearer ", "Basic dXNlcjpwYXNz", "sk_x"]
    )
    def test_it_answers_401_for_a_bad_key(self, call: Call, header: str) -> None:
        response = call("GET", "/api/test/read", headers={"Authorization": header})
        assert response.status_code == 401
        assert _error(response)["code"] == "invalid_api_key"

    def test_it_answers_401_for_a_key_with_the_right_prefix_but_wrong_secret(
        self, call: Call, secret: str
    ) -> None:
        response = call("GET", "/api/test/read", secret=secret[:-1] + "x")
        assert response.status_code == 401

    def test_it_answers_401_for_a_revoked_key(self, call: Call) -> None:
        api_key, secret = api_key_create(name="old")
        assert call("GET", "/api/test/read", secret=secret).status_code == 200
        api_key_revoke(api_key=api_key)
        response = call("GET", "/api/test/read", secret=secret)
        assert response.status_code == 401
        assert _error(response)["code"] == "invalid_api_key"

    def test_it_makes_the_key_the_request_principal(self, call: Call, secret: str) -> None:
        response = call("GET", "/api/test/read", secret=secret)
        assert response.status_code == 200
        prefix = secret[:15]
        assert response.json() == {
            "key": "tests",
            "user": f"API key {prefix}",
            "authenticated": True,
        }

    def test_it_records_when_a_key_was_last_used(self, call: Call, secret: str) -> None:
        assert ApiKey.objects.get().last_used_at is None
        call("GET", "/api/test/read", secret=secret)
        assert ApiKey.objects.get().last_used_at is not None


class TestScopes:
    def test_it_answers_403_naming_the_missing_scope(self, call: Call) -> None:
        _, secret = api_key_create(name="ingest only", scopes=["ingest"])
        response = call("GET", "/api/test/read", secret=secret)
        assert response.status_code == 403
        error = _error(response)
        assert error["type"] == "permission_error"
        assert error["code"] == "insufficient_scope"
        assert "'read' scope" in error["message"]

    def test_it_takes_the_scope_per_method(self, call: Call) -> None:
        _, secret = api_key_create(name="reader", scopes=["read"])
        assert call("GET", "/api/test/things", secret=secret).status_code == 200
        response = call("POST", "/api/test/things", secret=secret, json={"code": "a"})
        assert response.status_code == 403
        assert "'write' scope" in _error(response)["message"]
        assert Meter.objects.count() == 0

    def test_a_view_without_a_scope_fails_loudly_instead_of_opening_up(
        self, call: Call, secret: str
    ) -> None:
        response = call("GET", "/api/test/unscoped", secret=secret)
        assert response.status_code == 500
        error = _error(response)
        assert (error["type"], error["code"]) == ("api_error", "internal_error")


class TestLastUsed:
    NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def test_it_writes_last_used_at_most_once_a_minute(
        self, django_assert_num_queries: Any
    ) -> None:
        api_key, secret = api_key_create(name="busy")
        for offset, queries, expected in [(0, 2, 0), (30, 1, 0), (59, 1, 0), (61, 2, 61)]:
            at = self.NOW + timedelta(seconds=offset)
            with time_machine.travel(at, tick=False), django_assert_num_queries(queries):
                assert api_key_authenticate(secret=secret) == api_key
            api_key.refresh_from_db()
            assert api_key.last_used_at == self.NOW + timedelta(seconds=expected)


# --- the error envelope ---------------------------------------------------------------


class TestErrorEnvelope:
    def test_a_missing_field_names_it(self, call: Call, secret: str) -> None:
        response = call("POST", "/api/test/things", secret=secret, json={})
        assert response.status_code == 400
        assert _error(response) == {
            "type": "invalid_request_error",
            "code": "missing_field",
            "message": "Missing required field 'code': add it to the request body.",
            "param": "code",
        }

    @pytest.mark.parametrize(
        ("body", "param", "says"),
        [
            ({"code": "a", "limits": {"max": "many"}}, "limits.max", "valid integer"),
            ({"code": "a", "limits": {}}, "limits.max", "Missing required field"),
            ({"code": "a", "tags": ["ok", "toolong"]}, "tags.1", "no more than 3"),
            ({"code": "not a slug"}, "code", "letters, numbers"),
        ],
    )
    def test_a_validation_error_names_the_first_failing_field(
        self, call: Call, secret: str, body: dict[str, Any], param: str, says: str
    ) -> None:
        response = call("POST", "/api/test/things", secret=secret, json=body)
        assert response.status_code == 400
        error = _error(response)
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"
        assert error["code"] in {"invalid_request", "missing_field"}
        assert param in error["message"]
        assert says in error["message"]

    def test_bad_json_is_invalid_json(self, call: Call, secret: str) -> None:
        response = call(
            "POST",
            "/api/test/things",
            secret=secret,
            data=b'{"code": ',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        error = _error(response)
        assert error["code"] == "invalid_json"
        assert "Content-Type: application/json" in error["message"]

    def test_an_unknown_url_is_resource_missing(self, call: Call) -> None:
        response = call("GET", "/api/v1/nowhere")
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/json"
        error = _error(response)
        assert (error["type"], error["code"]) == ("invalid_request_error", "resource_missing")
        assert "/api/v1/nowhere" in error["message"]

    def test_a_missing_object_is_resource_missing(self, call: Call, secret: str) -> None:
        response = call("GET", "/api/test/meters/999999", secret=secret)
        assert response.status_code == 404
        assert _error(response)["code"] == "resource_missing"

    def test_a_wrong_method_is_method_not_allowed(self, call: Call, secret: str) -> None:
        response = call("DELETE", "/api/test/read", secret=secret)
        assert response.status_code == 405
        error = _error(response)
        assert error["code"] == "method_not_allowed"
        assert "DELETE is not allowed" in error["message"]
        assert "GET" in error["message"]

    def test_a_ledger_refusal_keeps_its_code_and_param(self, call: Call, secret: str) -> None:
        response = call("GET", "/api/test/ledger", secret=secret)
        assert response.status_code == 409
        assert _error(response) == {
            "type": "invalid_request_error",
            "code": "hold_not_open",
            "message": "hold 7 is already captured: create a new hold",
            "param": "hold",
        }


# --- Idempotency-Key ------------------------------------------------------------------


class TestIdempotency:
    def test_a_retry_replays_the_first_response_without_running_the_view(
        self, call: Call, secret: str
    ) -> None:
        body = {"code": "alpha"}
        first = call("POST", "/api/test/things", secret=secret, idempotency_key="k1", json=body)
        retry = call("POST", "/api/test/things", secret=secret, idempotency_key="k1", json=body)
        assert first.status_code == retry.status_code == 201
        assert retry.json() == first.json()
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert Meter.objects.count() == 1

    def test_keys_past_their_retention_are_forgotten_by_the_hourly_job(
        self, call: Call, secret: str
    ) -> None:
        body = {"code": "alpha"}
        call("POST", "/api/test/things", secret=secret, idempotency_key="old", json=body)
        call("POST", "/api/test/things", secret=secret, idempotency_key="new", json=body)
        day_ago = timezone.now() - timedelta(hours=24, seconds=1)
        IdempotencyRecord.objects.filter(key="old").update(created_at=day_ago)
        assert idempotency_records_prune_task() == 1
        assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]
        # A retry of the forgotten key runs again; the kept one still replays.
        again = call("POST", "/api/test/things", secret=secret, idempotency_key="old", json=body)
        assert "Idempotent-Replayed" not in again.headers
        kept = call("POST", "/api/test/things", secret=secret, idempotency_key="new", json=body)
        assert kept.headers["Idempotent-Replayed"] == "true"

    def test_without_the_header_every_post_runs(self, call: Call, secret: str) -> None:
        for _ in range(2):
            call("POST", "/api/test/things", secret=secret, json={"code": "alpha"})
        assert Meter.objects.count() == 2
        assert not IdempotencyRecord.objects.exists()

    @pytest.mark.parametrize(
        ("url", "body"),
        [("/api/test/things", {"code": "beta"}), ("/api/test/refusing", {"code": "alpha"})],
    )
    def test_the_same_key_for_another_request_is_refused(
        self, call: Call, secret: str, url: str, body: dict[str, str]
    ) -> None:
        call(
            "POST", "/api/test/things", secret=secret, idempotency_key="k1", json={"code": "alpha"}
        )
        response = call("POST", url, secret=secret, idempotency_key="k1", json=body)
        assert response.status_code == 409
        error = _error(response)
        assert (error["type"], error["code"]) == ("idempotency_error", "idempotency_key_reused")
        assert Meter.objects.count() == 1

    def test_keys_belong_to_one_api_key(self, call: Call, secret: str) -> None:
        _, other = api_key_create(name="other")
        for key in (secret, other):
            response = call(
                "POST", "/api/test/things", secret=key, idempotency_key="k1", json={"code": "a"}
            )
            assert response.status_code == 201
            assert "Idempotent-Replayed" not in response.headers
        assert Meter.objects.count() == 2

    def test_a_client_error_is_stored_and_replayed(self, call: Call, secret: str) -> None:
        responses = [
            call("POST", "/api/test/refusing", secret=secret, idempotency_key="k1", json={})
            for _ in range(2)
        ]
        assert [r.status_code for r in responses] == [409, 409]
        assert responses[1].json() == responses[0].json()
        assert _error(responses[1])["code"] == "thing_exists"
        assert responses[1].headers["Idempotent-Replayed"] == "true"
        assert Meter.objects.count() == 1

    def test_a_server_error_is_not_stored_so_the_key_can_be_retried(
        self, call: Call, secret: str
    ) -> None:
        first = call("POST", "/api/test/failing-once", secret=secret, idempotency_key="k1", json={})
        assert first.status_code == 500
        assert _error(first)["type"] == "api_error"
        assert not IdempotencyRecord.objects.exists()
        retry = call("POST", "/api/test/failing-once", secret=secret, idempotency_key="k1", json={})
        assert retry.status_code == 201
        assert retry.json() == {"attempts": 2}
        assert "Idempotent-Replayed" not in retry.headers

    def test_a_retry_while_the_first_request_runs_is_refused(self, call: Call, secret: str) -> None:
        SLOW_STARTED.clear()
        SLOW_RELEASE.clear()
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(
                call, "POST", "/api/test/slow", secret=secret, idempotency_key="k1", json={}
            )
            try:
                assert SLOW_STARTED.wait(timeout=10)
                during = call(
                    "POST", "/api/test/slow", secret=secret, idempotency_key="k1", json={}
                )
            finally:
                SLOW_RELEASE.set()
            assert first.result(timeout=15).status_code == 201
        assert during.status_code == 409
        assert _error(during)["code"] == "idempotency_key_in_use"
        after = call("POST", "/api/test/slow", secret=secret, idempotency_key="k1", json={})
        assert after.status_code == 201
        assert after.headers["Idempotent-Replayed"] == "true"
        assert Meter.objects.count() == 1

    def test_concurrent_first_requests_run_the_view_once(self, call: Call, secret: str) -> None:
        start = threading.Barrier(8)

        def post() -> requests.Response:
            start.wait(timeout=10)
            return call(
                "POST", "/api/test/things", secret=secret, idempotency_key="k1", json={"code": "a"}
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = [f.result(timeout=30) for f in [pool.submit(post) for _ in range(8)]]
        assert Meter.objects.count() == 1
        assert {r.status_code for r in responses} <= {201, 409}
        ran = [
            r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers
        ]
        assert len(ran) == 1

    def test_a_key_longer_than_255_characters_is_refused(self, call: Call, secret: str) -> None:
        response = call(
            "POST", "/api/test/things", secret=secret, idempotency_key="k" * 256, json={"code": "a"}
        )
        assert response.status_code == 400
        assert _error(response)["code"] == "idempotency_key_too_long"
        assert Meter.objects.count() == 0
        ok = call(
            "POST", "/api/test/things", secret=secret, idempotency_key="k" * 255, json={"code": "a"}
        )
        assert ok.status_code == 201

    def test_refusals_before_the_view_are_not_stored(self, call: Call) -> None:
        _, reader = api_key_create(name="reader", scopes=["read"])
        response = call("POST", "/api/test/things", secret=reader, idempotency_key="k1", json={})
        assert response.status_code == 403
        assert not IdempotencyRecord.objects.exists()


# --- throttling -----------------------------------------------------------------------


class TestThrottling:
    def test_it_answers_429_with_retry_after_per_api_key(
        self, call: Call, secret: str, settings: Any
    ) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"api_key": "2/minute"},
        }
        statuses = [call("GET", "/api/test/read", secret=secret).status_code for _ in range(2)]
        assert statuses == [200, 200]
        response = call("GET", "/api/test/read", secret=secret)
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        error = _error(response)
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
        assert "retry after" in error["message"]
        _, other = api_key_create(name="other")
        assert call("GET", "/api/test/read", secret=other).status_code == 200

    def test_it_takes_per_second_rates(self, call: Call, secret: str, settings: Any) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"api_key": "1/second"},
        }
        with time_machine.travel(datetime(2026, 11, 20, 12, 0, tzinfo=UTC), tick=False) as clock:
            assert call("GET", "/api/test/read", secret=secret).status_code == 200
            throttled = call("GET", "/api/test/read", secret=secret)
            assert throttled.status_code == 429
            assert throttled.headers["Retry-After"] == "1"
            clock.shift(1.5)
            assert call("GET", "/api/test/read", secret=secret).status_code == 200


# --- OpenAPI --------------------------------------------------------------------------


class TestOpenApi:
    def test_the_schema_shows_bearer_auth_idempotency_and_the_envelope(self, call: Call) -> None:
        schema = call("GET", "/api/schema/?format=json").json()
        assert schema["components"]["securitySchemes"]["ApiKeyAuth"] == {
            "type": "http",
            "scheme": "bearer",
        }
        post = schema["paths"]["/api/test/things"]["post"]
        assert {"ApiKeyAuth": []} in post["security"]
        assert {"in": "header", "name": "Idempotency-Key"}.items() <= post["parameters"][0].items()
        envelope = post["responses"]["409"]["content"]["application/json"]["schema"]
        assert envelope == {"$ref": "#/components/schemas/ErrorResponse"}
        error = schema["components"]["schemas"]["ApiError"]
        assert set(error["properties"]) == {"type", "code", "message", "param"}
        get = schema["paths"]["/api/test/things"]["get"]
        assert "parameters" not in get
