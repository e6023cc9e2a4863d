"""A plan's ``public`` key: whether the portal offers it; stored on the plan, unversioned."""

from __future__ import annotations

import pytest

from plans import catalog
from plans.models import Plan, PlanVersion
from plans.services import subscription_start
from tests.plans.factories import (
    BASIC,
    DEMO_CATALOG,
    customer,
    load_catalog_with_basic,
    load_demo_catalog,
    plan,
)

pytestmark = pytest.mark.django_db

DEMO = DEMO_CATALOG.read_text()
PRO_PUBLIC = "    name: Pro\n    interval: month\n    public: true\n"
assert DEMO.count(PRO_PUBLIC) == 1


def test_the_demo_plans_are_public_and_a_plan_without_the_key_is_not() -> None:
    load_catalog_with_basic()
    public = dict(Plan.objects.values_list("code", "public"))
    assert public == {
        "basic": False,
        "starter": True,
        "pro": True,
        "team": True,
        "scale": True,
    }


def test_public_dumps_and_loads_back_and_false_is_left_out() -> None:
    load_catalog_with_basic()
    dumped = catalog.dump()
    assert dumped.count("public: true") == 4
    assert "public: false" not in dumped
    Plan.objects.update(public=False)
    assert catalog.load(dumped) == [
        f"plan {code}: public" for code in ("pro", "scale", "starter", "team")
    ]
    assert set(Plan.objects.filter(public=True).values_list("code", flat=True)) == {
        "starter",
        "pro",
        "team",
        "scale",
    }
    assert catalog.load(dumped) == []


def test_hiding_a_plan_in_use_keeps_its_version_and_its_subscribers() -> None:
    load_demo_catalog()
    subscription = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    hidden = DEMO.replace(PRO_PUBLIC, "    name: Pro\n    interval: month\n    public: false\n")
    assert catalog.load(hidden) == ["plan pro: no longer public"]
    assert not plan("pro").public
    assert PlanVersion.objects.filter(plan__code="pro").count() == 1
    subscription.refresh_from_db()
    assert subscription.plan_version.plan.code == "pro"
    assert catalog.load(hidden.replace("    public: false\n", "")) == []  # false is the default


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"', "[true]"])
def test_a_public_that_is_not_a_boolean_is_refused_with_the_field_named(value: str) -> None:
    text = DEMO.replace("plans:\n", "plans:\n" + BASIC + f"    public: {value}\n", 1)
    with pytest.raises(catalog.CatalogError) as refused:
        catalog.load(text)
    assert "plans[0] (basic).public: Expected `bool`" in str(refused.value)
    assert not Plan.objects.exists()
