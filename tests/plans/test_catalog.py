from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
import time_machine
from django.core.management import CommandError, call_command

from plans import catalog
from plans.models import CreditPack, Meter, Plan, PlanVersion, Rate, RateCardVersion
from plans.money import as_money
from plans.services import subscription_start
from tests.plans.factories import DEMO_CATALOG, customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

DEMO = DEMO_CATALOG.read_text()
PRO_FEATURES = (
    "features:\n      gpt4_access: true                                      # a boolean feature"
)
assert DEMO.count(PRO_FEATURES) == 2  # pro's and team's; str.replace(..., 1) takes pro's
PRO_ROLLOVER = 'rollover: {max_credits: "5000"}'


def _pro_alerts(alerts: str) -> str:
    """The demo file with ``alerts`` set on the pro plan."""
    return DEMO.replace(PRO_ROLLOVER, f"{PRO_ROLLOVER}\n    alerts: {alerts}")


def _snapshot() -> dict[str, object]:
    return {
        "meters": sorted(
            Meter.objects.values_list(
                "code",
                "event_name",
                "aggregation",
                "unit",
                "dimensions",
                "value_property",
                "dimension_properties",
                "display_name",
            )
        ),
        "versions": sorted(
            RateCardVersion.objects.values_list("rate_card__code", "version", "effective_from")
        ),
        "rates": sorted(
            (
                r.version.rate_card.code,
                r.version.version,
                r.meter.code,
                sorted(r.match.items()),
                r.credits,
                r.per,
            )
            for r in Rate.objects.select_related("version__rate_card", "meter")
        ),
        "plans": sorted(
            PlanVersion.objects.values_list(
                "plan__code",
                "version",
                "name",
                "interval",
                "base_fee",
                "base_fee_currency",
                "included_credits",
                "rate_card__code",
                "overage_policy",
                "soft_limit_percent",
                "overage_price_per_credit",
                "rollover_max_credits",
                "alert_usage_thresholds",
                "alert_low_balance_credits",
                "features",
            )
        ),
        "packs": sorted(
            CreditPack.objects.values_list("code", "name", "credits", "price", "expires_after_days")
        ),
    }


def _command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


def test_it_loads_the_demo_catalog_and_a_second_load_changes_nothing() -> None:
    first = _command("load_catalog", str(DEMO_CATALOG))
    assert "plan pro: version 1 created" in first
    before = _snapshot()
    second = _command("load_catalog", str(DEMO_CATALOG))
    assert second.strip().endswith("no change(s)")
    assert _snapshot() == before


def test_a_dump_loads_back_to_the_same_catalog() -> None:
    load_demo_catalog()
    dumped = _command("dump_catalog")
    before = _snapshot()
    assert catalog.load(dumped) == []  # into the same database: nothing to change
    # Into an empty catalog: the same rows again.
    for model in (Rate, RateCardVersion, PlanVersion, Plan, CreditPack, Meter):
        model.objects.all().delete()
    catalog.load(dumped)
    assert _snapshot() == before
    assert _command("dump_catalog") == dumped


def test_meters_fed_from_properties_dump_their_keys_and_jsonpath_loads_as_a_path() -> None:
    load_demo_catalog()
    output = Meter.objects.get(code="llm_output_tokens")
    assert (output.event_name, output.value_property) == ("llm.call", "output_tokens")
    assert (output.dimension_properties, output.dimensions) == (["model"], ["model"])
    assert output.display_name == "Output tokens"
    dumped = _command("dump_catalog")
    assert "value_property: output_tokens" in dumped
    assert "dimension_properties:\n  - model" in dumped
    # OpenMeter spells paths as JSONPath; "$.usage.out" is the path usage.out, and loading
    # the same file again changes nothing.
    openmeter_style = dumped.replace("value_property: output_tokens", "value_property: $.usage.out")
    assert catalog.load(openmeter_style) == ["meter llm_output_tokens: updated"]
    assert Meter.objects.get(code="llm_output_tokens").value_property == "usage.out"
    assert catalog.load(openmeter_style) == []


def test_plan_alerts_load_and_dump_back_to_the_same_catalog() -> None:
    catalog.load(_pro_alerts('{usage_thresholds: [90, 25], low_balance_credits: "1000.5"}'))
    pro = PlanVersion.objects.get(plan__code="pro")
    assert pro.alert_usage_thresholds == [25, 90]
    assert pro.alert_low_balance_credits == Decimal("1000.5")
    dumped = _command("dump_catalog")
    assert "alerts:\n    usage_thresholds:\n    - 25\n    - 90\n" in dumped
    assert "low_balance_credits: '1000.5'" in dumped
    before = _snapshot()
    for model in (Rate, RateCardVersion, PlanVersion, Plan, CreditPack, Meter):
        model.objects.all().delete()
    catalog.load(dumped)
    assert _snapshot() == before
    assert _command("dump_catalog") == dumped


def test_a_file_without_alerts_gets_the_defaults_and_dumps_without_them() -> None:
    without = re.sub(r"\n    alerts: .*", "", DEMO)
    assert "alerts" not in without
    catalog.load(without)
    assert set(PlanVersion.objects.values_list("alert_low_balance_credits", flat=True)) == {None}
    assert all(
        v == [50, 80, 100]
        for v in PlanVersion.objects.values_list("alert_usage_thresholds", flat=True)
    )
    assert "alerts" not in _command("dump_catalog")
    # The defaults written out, in any order, are no change either.
    written = without.replace(
        PRO_ROLLOVER, f"{PRO_ROLLOVER}\n    alerts: {{usage_thresholds: [100, 80, 50]}}"
    )
    assert catalog.load(written) == []


def test_changing_only_the_alerts_of_a_plan_in_use_makes_a_new_version() -> None:
    load_demo_catalog()
    subscription = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    out = catalog.load(_pro_alerts("{usage_thresholds: [90]}"))
    assert out == ["plan pro: version 2 created (subscriptions stay on the version they have)"]
    subscription.refresh_from_db()
    assert subscription.plan_version.alert_usage_thresholds == [50, 80, 100]
    assert PlanVersion.objects.get(plan__code="pro", version=2).alert_usage_thresholds == [90]


def test_a_plan_in_use_gets_a_new_version_and_subscriptions_keep_theirs() -> None:
    load_demo_catalog()
    subscription = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    out = catalog.load(DEMO.replace('base_fee: "49.00"', 'base_fee: "59.00"'))
    assert out == ["plan pro: version 2 created (subscriptions stay on the version they have)"]
    subscription.refresh_from_db()
    assert subscription.plan_version.version == 1
    assert str(as_money(subscription.plan_version.base_fee).amount) == "49.00"
    assert (
        str(as_money(PlanVersion.objects.get(plan__code="pro", version=2).base_fee).amount)
        == "59.00"
    )


def test_plan_features_load_as_written_and_dump_back_to_the_same_catalog() -> None:
    load_demo_catalog()
    starter, pro = (PlanVersion.objects.get(plan__code=c) for c in ("starter", "pro"))
    assert starter.features == {"doc_summaries": {"meter": "doc_summaries", "limit": "500"}}
    assert [(f.code, f.enabled, f.meter, f.limit) for f in starter.feature_list()] == [
        ("doc_summaries", True, "doc_summaries", Decimal(500))
    ]
    assert pro.features == {"gpt4_access": True}
    dumped = _command("dump_catalog")
    assert "features:\n    gpt4_access: true\n" in dumped
    assert "doc_summaries:\n      meter: doc_summaries\n      limit: '500'" in dumped
    before = _snapshot()
    for model in (Rate, RateCardVersion, PlanVersion, Plan, CreditPack, Meter):
        model.objects.all().delete()
    catalog.load(dumped)
    assert _snapshot() == before
    assert _command("dump_catalog") == dumped


def test_the_same_limit_written_another_way_is_no_change() -> None:
    load_demo_catalog()
    assert catalog.load(DEMO.replace('limit: "500"', "limit: 500")) == []
    assert catalog.load(DEMO.replace('limit: "500"', 'limit: "500.000"')) == []


def test_changing_only_the_features_of_a_plan_in_use_makes_a_new_version() -> None:
    load_demo_catalog()
    subscription = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    changed = DEMO.replace(PRO_FEATURES, "features: {gpt4_access: false}", 1)
    out = catalog.load(changed)
    assert out == ["plan pro: version 2 created (subscriptions stay on the version they have)"]
    subscription.refresh_from_db()
    assert subscription.plan_version.features == {"gpt4_access": True}
    assert PlanVersion.objects.get(plan__code="pro", version=2).features == {"gpt4_access": False}
    assert catalog.load(changed) == []


def test_a_plan_not_in_use_is_updated_in_place() -> None:
    load_demo_catalog()
    out = catalog.load(DEMO.replace('base_fee: "49.00"', 'base_fee: "59.00"'))
    assert out == ["plan pro: version 1 updated (not yet in use)"]
    assert PlanVersion.objects.filter(plan__code="pro").count() == 1


def test_a_rate_change_on_a_card_in_use_starts_now_and_reloading_changes_nothing() -> None:
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        load_demo_catalog()
        subscription_start(customer=customer(), plan=plan("pro"), actor="t")
        changed = DEMO.replace('credits: "15",  per: 1000', 'credits: "18",  per: 1000')
        out = catalog.load(changed)
        assert out == [
            "rate card standard: version 2 effective 2026-11-20T12:00:00Z "
            "(the card is in use, so it starts now)"
        ]
        assert catalog.load(changed) == []
        assert catalog.load(DEMO) == []  # the original entry still describes version 1
    versions = list(
        RateCardVersion.objects.filter(rate_card__code="standard")
        .order_by("version")
        .values_list("effective_from", flat=True)
    )
    assert versions == [datetime(2026, 1, 1, tzinfo=UTC), now]


BAD = [
    ("not: [valid", "the file is not valid YAML"),
    ("- just a list", "the file must be a mapping"),
    (
        DEMO.replace('credits: "2.5"', "credits: 2.5"),
        'write decimals as quoted strings, e.g. "2.5"',
    ),
    (
        DEMO.replace("aggregation: sum", "aggregation: avg"),
        "meters[0] (llm_tokens).aggregation: Invalid enum value 'avg'",
    ),
    (
        DEMO.replace("interval: month", "interval: week", 1),
        "plans[0] (starter).interval: Invalid enum value 'week'",
    ),
    (DEMO.replace("    name: Pro\n", ""), "plans[1] (pro): Object missing required field `name`"),
    (
        DEMO.replace("    unit: summaries", "    unit: summaries\n    colour: red"),
        "meters[1] (doc_summaries): Object contains unknown field `colour`",
    ),
    (
        DEMO.replace("rate_card: standard", "rate_card: premium", 1),
        "plans[0] (starter).rate_card: unknown rate card 'premium'; define it under rate_cards",
    ),
    (
        DEMO.replace("{meter: doc_summaries,", "{meter: docs,"),
        "rate_cards[0] (standard).rates[3].meter: unknown meter 'docs'; define it under meters",
    ),
    (
        DEMO.replace("match: {model: small}", "match: {colour: small}"),
        "rate_cards[0] (standard).rates[2].match: colour is not a dimension of meter 'llm_tokens'",
    ),
    (
        DEMO.replace('credits: "0.5"', 'credits: "0.0000001"'),
        "rate_cards[0] (standard).rates[2].credits: has more than 6 decimal places",
    ),
    (
        DEMO.replace('credits: "0.5"', 'credits: "-1"'),
        "rate_cards[0] (standard).rates[2].credits: must be zero or more, not -1",
    ),
    (
        DEMO.replace("per: 1}", "per: 0}"),
        "rate_cards[0] (standard).rates[3].per: must be 1 or more, not 0",
    ),
    (
        DEMO.replace(
            "      - {meter: llm_tokens, match: {model: small},",
            '      - {meter: llm_tokens, match: {token_type: output}, credits: "1", per: 1000}\n'
            "      - {meter: llm_tokens, match: {model: small},",
        ),
        "rate_cards[0] (standard).rates[3]: an event with "
        "{'token_type': 'output', 'model': 'small'}",
    ),
    (
        DEMO.replace('"2026-01-01T00:00:00Z"', '"first of january"'),
        "rate_cards[0] (standard).effective_from: must be an RFC 3339 time",
    ),
    (
        DEMO.replace('base_fee: "49.00"', 'base_fee: "49.001"'),
        "plans[1] (pro).base_fee: has more than 2 decimal places",
    ),
    (
        DEMO.replace(', price_per_credit: "0.004"', ""),
        "plans[1] (pro).overage.price_per_credit: is required for the postpaid policy",
    ),
    (
        DEMO.replace(', soft_limit_percent: "10"', ""),
        "plans[2] (team).overage.soft_limit_percent: is required for the soft_limit policy",
    ),
    (DEMO.replace("code: team", "code: pro"), "plans[2]: code 'pro' is already used by plans[1]"),
    (
        _pro_alerts("{usage_thresholds: [0, 50, 101]}"),
        "plans[1] (pro).alerts.usage_thresholds: 101 is not a whole percentage from 1 to 100",
    ),
    (
        _pro_alerts("{usage_thresholds: [0]}"),
        "plans[1] (pro).alerts.usage_thresholds: 0 is not a whole percentage from 1 to 100",
    ),
    (
        _pro_alerts("{usage_thresholds: [50, 80, 50]}"),
        "plans[1] (pro).alerts.usage_thresholds: lists a threshold twice",
    ),
    (
        _pro_alerts(f"{{usage_thresholds: {list(range(1, 12))}}}"),
        "plans[1] (pro).alerts.usage_thresholds: lists 11 thresholds; at most 10",
    ),
    (
        _pro_alerts('{usage_thresholds: ["50"]}'),
        "plans[1] (pro).alerts.usage_thresholds[0]: Expected `int`, got `str`",
    ),
    (
        _pro_alerts("{low_balance_credits: 1000.5}"),
        "plans[1] (pro).alerts.low_balance_credits: "
        'write decimals as quoted strings, e.g. "1000.5"',
    ),
    (
        _pro_alerts('{low_balance_credits: "-5"}'),
        "plans[1] (pro).alerts.low_balance_credits: must be zero or more, not -5",
    ),
    (
        _pro_alerts('{low_balance_credits: "0.0000001"}'),
        "plans[1] (pro).alerts.low_balance_credits: has more than 6 decimal places",
    ),
    (
        _pro_alerts("{usage: [50]}"),
        "plans[1] (pro).alerts: Object contains unknown field `usage`",
    ),
    (
        DEMO.replace('credits: "10000"', 'credits: "0"'),
        "credit_packs[0] (pack_10k).credits: must be greater than 0",
    ),
    (
        DEMO.replace("expires_after_days: 365}", "expires_after_days: 0}", 1),
        "credit_packs[0] (pack_10k).expires_after_days: must be 1 or more",
    ),
    (
        DEMO.replace("currency: USD", "currency: XYZ"),
        "currency: unsupported currency 'XYZ'; use one of AUD, CAD, CHF, EUR, GBP, USD",
    ),
    (
        DEMO.replace(
            "event_name: doc.summary", "event_name: doc.summary\n    value_property: a..b"
        ),
        "meters[1] (doc_summaries).value_property: 'a..b': a property name, or a dotted path",
    ),
    (
        DEMO.replace(
            "dimensions: [model, token_type]",
            "dimensions: [model, token_type]\n    dimension_properties: [llm.model, tier]",
        ),
        "meters[0] (llm_tokens).dimension_properties: 'tier' is not among the meter's dimensions",
    ),
    (
        DEMO.replace("dimensions: [model, token_type]", "dimension_properties: [a.model, b.model]"),
        "meters[0] (llm_tokens).dimension_properties: two properties end in the same name",
    ),
    (
        DEMO.replace('{meter: doc_summaries, limit: "500"}', '{meter: summaries, limit: "500"}'),
        "plans[0] (starter).features.doc_summaries.meter: unknown meter 'summaries'",
    ),
    (
        DEMO.replace('limit: "500"', 'limit: "-5"'),
        "plans[0] (starter).features.doc_summaries.limit: must be zero or more, not -5",
    ),
    (
        DEMO.replace('limit: "500"', 'limit: "lots"'),
        "plans[0] (starter).features.doc_summaries.limit: must be a number, not 'lots'",
    ),
    (
        DEMO.replace('limit: "500"', 'limit: "0.0000001"'),
        "plans[0] (starter).features.doc_summaries.limit: has more than 6 decimal places",
    ),
    (
        DEMO.replace("gpt4_access: true", "GPT-4 access: true", 1),
        "plans[1] (pro).features.GPT-4 access: a feature code: lower-case letters",
    ),
    (
        DEMO.replace("gpt4_access: true", 'gpt4_access: "yes"', 1),
        "plans[1] (pro).features",
    ),
    (
        DEMO.replace('limit: "500"}', 'limit: "500", per: month}'),
        "plans[0] (starter).features",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), BAD, ids=[m.split(":")[0][:40] + str(i) for i, (_, m) in enumerate(BAD)]
)
def test_a_bad_file_is_refused_whole_with_a_message_naming_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    out = StringIO()
    with pytest.raises(CommandError, match="refused, nothing was changed"):
        call_command("load_catalog", str(path), stdout=out, stderr=out)
    assert message in out.getvalue()
    assert not Meter.objects.exists() and not Plan.objects.exists()


def test_a_bad_file_leaves_an_existing_catalog_untouched() -> None:
    load_demo_catalog()
    before = _snapshot()
    broken = DEMO.replace('base_fee: "49.00"', 'base_fee: "59.00"').replace(
        "rate_card: standard", "rate_card: nope", 1
    )
    with pytest.raises(catalog.CatalogError) as error:
        catalog.load(broken)
    assert error.value.problems == [
        "plans[0] (starter).rate_card: unknown rate card 'nope'; define it under rate_cards"
    ]
    assert _snapshot() == before


def test_it_reports_every_problem_at_once() -> None:
    broken = DEMO.replace('credits: "0.5"', 'credits: "-1"', 1).replace("per: 1}", "per: 0}")
    with pytest.raises(catalog.CatalogError) as error:
        catalog.load(broken)
    assert len(error.value.problems) == 2
