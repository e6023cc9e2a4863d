"""Routes for the test-only API views, which live beside their tests."""

from tests.billing_portal.api.test_api_foundation import urlpatterns

handler404 = "billing_portal.api.errors.api_not_found"

__all__ = ["handler404", "urlpatterns"]
