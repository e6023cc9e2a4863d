"""An unknown /api/v1 path answers the error envelope's 404 for every method, with
DEBUG on as well (where Django would otherwise answer its HTML page)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tests.billing_portal.api.http_support import Api, error_of

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(DEBUG=True)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def test_it_answers_resource_missing_for_any_method(api: Api, method: str) -> None:
    for path in ("/nowhere", "/customers/acme/nothing/here", "/customers/", "/events/"):
        response = api.request(method, path, {"a": 1})
        if method == "HEAD":
            assert response.status_code == 404
            assert response.headers["Content-Type"] == "application/json"
            continue
        error = error_of(response, 404, "resource_missing")
        assert error["type"] == "invalid_request_error"
        assert f"/api/v1{path}" in error["message"]


def test_it_needs_no_key(api: Api) -> None:
    error = error_of(api.request("GET", "/nowhere", key=""), 404, "resource_missing")
    assert "Check the URL" in error["message"]
