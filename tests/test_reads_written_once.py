"""Reads every request makes (the API key, ingest's meters), written once as SQL rather
than querysets compiled per request, give the instances the querysets give."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Model

from metering.ingest import _meters
from plans.apikeys import api_key_authenticate, api_key_create, api_key_revoke
from plans.models import ApiKey, Meter
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db


def fields(instance: Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_ingest_reads_every_meter_as_the_queryset() -> None:
    load_demo_catalog()
    read = sorted(_meters(), key=lambda m: m.pk)
    expected = sorted(Meter.objects.all(), key=lambda m: m.pk)
    assert len(read) >= 2
    assert [fields(m) for m in read] == [fields(m) for m in expected]
    assert all(isinstance(m.dimensions, list) for m in read)  # JSON, decoded


def test_an_api_key_is_read_as_the_queryset() -> None:
    api_key, secret = api_key_create(name="reader")
    found = api_key_authenticate(secret=secret)
    assert found is not None and found.pk == api_key.pk
    expected = ApiKey.objects.get(pk=api_key.pk)
    assert fields(found) == fields(expected)  # last_used_at included: recorded on use
    assert found.last_used_at is not None
    assert isinstance(found.scopes, list) and found.scopes == expected.scopes
    # Same prefix, wrong secret; and a revoked key: no key.
    assert api_key_authenticate(secret=secret[:-1] + ("a" if secret[-1] != "a" else "b")) is None
    api_key_revoke(api_key=api_key)
    assert api_key_authenticate(secret=secret) is None
