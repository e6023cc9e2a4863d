"""Staff read a rate card version's prices as the catalog wrote them: flat, packages,
tiers, and the provider's cost."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from plans.models import RateCardVersion
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db


def test_the_rate_card_page_shows_tiers_packages_and_cost(
    client_as: Callable[[str], Client],
) -> None:
    load_demo_catalog()
    scale = RateCardVersion.objects.get(rate_card__code="scale")
    page = client_as("Billing admin").get(
        reverse("admin:plans_ratecardversion_change", args=[scale.pk])
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert (
        "graduated, per 1,000: up to 10,000,000: 2.5; up to 100,000,000: 2; above 100,000,000: 1.5"
        in text
    )
    assert "volume, per 1,000: up to 50,000,000: 0.5; above 50,000,000: 0.4" in text
    assert "450 per started package of 10" in text
    assert "0.0025 USD per 1,000" in text  # the provider's cost of large input tokens
