"""Currencies come from settings, so the migrations do not move with Babel's locale data."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import djmoney.settings
import pytest
from django.apps import apps
from django.conf import settings
from djmoney.models.fields import CurrencyField
from moneyed import Currency

from plans.catalog import CatalogError, load


def _currency_fields() -> Iterator[Any]:
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, CurrencyField):
                yield field


def test_every_money_field_offers_exactly_the_configured_currencies() -> None:
    fields = list(_currency_fields())
    assert len(fields) >= 10  # the money fields of ledger, plans, invoicing, portal, alerts
    expected = sorted(settings.CURRENCY_CHOICES)
    for field in fields:
        assert sorted(field.choices) == expected, field
    assert {"USD", "EUR", "GBP"} <= set(settings.CURRENCIES)


def test_renamed_babel_currencies_change_no_choice() -> None:
    before = list(djmoney.settings.CURRENCY_CHOICES or [])
    renamed = mock.patch.object(Currency, "name", property(lambda self: f"renamed {self.code}"))
    try:
        with renamed:
            importlib.reload(djmoney.settings)
            choices = djmoney.settings.CURRENCY_CHOICES or []
            assert sorted(choices) == sorted(settings.CURRENCY_CHOICES)
    finally:
        importlib.reload(djmoney.settings)
    assert before == djmoney.settings.CURRENCY_CHOICES


@pytest.mark.django_db
def test_a_catalog_in_an_unsupported_currency_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(CatalogError) as refused:
        load("currency: JPY\nmeters: []\n")
    assert "JPY" in str(refused.value)
    assert "USD" in str(refused.value)
