"""Routes for the test-only API views, which live beside their tests."""

from tests.plans.test_api_foundation import urlpatterns

handler404 = "plans.api_support.api_not_found"

__all__ = ["handler404", "urlpatterns"]
