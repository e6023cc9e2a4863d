"""Pricing as code: load and dump the catalog file (meters, rate cards, plans, packs).

Loading is all or nothing: the whole file is checked first and every problem is
reported with the entry and field it concerns; only a clean file is applied, in one
transaction. Loading the same file twice changes nothing. A plan or rate card version
that is in use is never edited: the change becomes a new version.

A plan's ``alerts`` (the alert rules of subscribers who set none in the portal) are part
of its version like its price: changing only them on a plan in use makes a new version,
which new subscriptions and plan changes get, while current subscribers keep the alerts
they subscribed with. Rules a customer saved in the portal always win over the plan's.
A plan's ``features`` (booleans, or a limit per period on a meter's units) are versioned
the same way.

A plan's ``public`` (``true`` or ``false``, default ``false``) says whether the customer
portal offers it in its plan comparison. It is stored on the plan, not on a version: it
is visibility, not a billing term, so changing it never makes a new version, and
subscribers of a plan that is not public keep it (they are only not offered it again).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation, localcontext
from typing import Any, Literal

import msgspec
import yaml
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from djmoney.money import Money

from ledger.errors import DomainError
from ledger.models import CREDIT_QUANTUM
from plans.models import (
    MAX_CREDITS,
    MAX_EVENT_VALUE,
    CreditPack,
    Meter,
    Plan,
    PlanVersion,
    Rate,
    RateCard,
    RateCardVersion,
    SubscriptionPeriod,
    default_alert_usage_thresholds,
)
from plans.money import as_money

Number = str | int


class MeterSpec(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    event_name: str
    aggregation: Literal["sum", "count", "max"]
    unit: str
    dimensions: list[str] = []
    value_property: str = "value"
    dimension_properties: list[str] = []
    display_name: str = ""

    def effective_dimensions(self) -> list[str]:
        """Named in ``dimensions``, else by the last part of each dimension property."""
        if self.dimensions or not self.dimension_properties:
            return list(self.dimensions)
        return [_property_path(p).rsplit(".", 1)[-1] for p in self.dimension_properties]


class TierSpec(msgspec.Struct, forbid_unknown_fields=True):
    credits: Number
    # The tier's last unit ("inf" or omitted: open, the last tier only); ``from`` may be
    # written for readability and must then equal the previous tier's ``up_to`` (0 first).
    up_to: Number | None = None
    start: Number | None = msgspec.field(default=None, name="from")


class RateSpec(msgspec.Struct, forbid_unknown_fields=True):
    meter: str
    credits: Number | None = None
    per: int = 1
    match: dict[str, str] = {}
    tiers_mode: Literal["graduated", "volume"] | None = None
    tiers: list[TierSpec] = []
    # "up": ``per`` units are a package, and a started package costs a whole one.
    round: Literal["up"] | None = None
    # The provider's price per ``per`` units, in the catalog's currency.
    cost: Number | None = None


class RateCardSpec(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    effective_from: Any  # YAML gives a datetime for an unquoted timestamp, else a string
    rates: list[RateSpec]


class OverageSpec(msgspec.Struct, forbid_unknown_fields=True):
    policy: Literal["hard_stop", "soft_limit", "postpaid"]
    price_per_credit: Number | None = None
    soft_limit_percent: Number | None = None


class RolloverSpec(msgspec.Struct, forbid_unknown_fields=True):
    max_credits: Number


DEFAULT_USAGE_THRESHOLDS = tuple(default_alert_usage_thresholds())
MAX_USAGE_THRESHOLDS = 10


class AlertsSpec(msgspec.Struct, forbid_unknown_fields=True):
    usage_thresholds: list[int] = msgspec.field(
        default_factory=lambda: list(DEFAULT_USAGE_THRESHOLDS)
    )
    low_balance_credits: Number | None = None


class MeteredFeatureSpec(msgspec.Struct, forbid_unknown_fields=True):
    meter: str
    limit: Number


class PastDueSpec(msgspec.Struct, forbid_unknown_fields=True):
    deny_after_days: int


class PlanSpec(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    interval: Literal["month", "year"]
    base_fee: Number
    rate_card: str
    overage: OverageSpec
    included_credits: Number = "0"
    rollover: RolloverSpec | None = None
    alerts: AlertsSpec = msgspec.field(default_factory=AlertsSpec)
    features: dict[str, bool | MeteredFeatureSpec] = {}
    past_due_policy: Literal["allow"] | PastDueSpec = "allow"
    public: bool = False


class PackSpec(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    credits: Number
    price: Number
    expires_after_days: int | None = None


class CatalogSpec(msgspec.Struct, forbid_unknown_fields=True):
    currency: str = "USD"
    meters: list[MeterSpec] = []
    rate_cards: list[RateCardSpec] = []
    plans: list[PlanSpec] = []
    credit_packs: list[PackSpec] = []


class CatalogError(DomainError):
    code = "invalid_catalog"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PROPERTY_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def _property_path(path: str) -> str:
    """A dotted property path; OpenMeter's JSONPath spelling ``$.usage.tokens`` is taken
    as ``usage.tokens``, so meters copied from it load unchanged."""
    return path[2:] if path.startswith("$.") else path


NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")


# --- parsing and checking -------------------------------------------------------------


def parse(text: str) -> CatalogSpec:
    """Parse and check a catalog file; raise CatalogError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError([f"the file is not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise CatalogError(
            ["the file must be a mapping with meters, rate_cards, plans, credit_packs"]
        )
    _refuse_floats(raw, "")
    try:
        spec = msgspec.convert(raw, CatalogSpec)
    except msgspec.ValidationError as exc:
        raise CatalogError([_readable_path(str(exc), raw)]) from exc
    problems = list(_check(spec))
    if problems:
        raise CatalogError(problems)
    return spec


def _refuse_floats(node: Any, path: str) -> None:
    # YAML reads 2.5 as a binary float; credits and money must be exact, so decimals are
    # written as strings, as in the documented example.
    if isinstance(node, float):
        raise CatalogError([f'{path}: write decimals as quoted strings, e.g. "{node}"'])
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_floats(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            code = value.get("code") if isinstance(value, dict) else None
            label = f" ({code})" if isinstance(code, str) else ""
            _refuse_floats(value, f"{path}[{index}]{label}")


def _readable_path(message: str, raw: dict[str, Any]) -> str:
    """Turn msgspec's ``$.plans[0].name`` into ``plans[0] (pro).name``."""
    match = re.search(r"at `\$\.(\w+)\[(\d+)\](.*)`", message)
    if not match:
        return message.replace("`$.", "`")
    section, index, rest = match.group(1), int(match.group(2)), match.group(3)
    entries = raw.get(section) or []
    code = (
        entries[index].get("code")
        if index < len(entries) and isinstance(entries[index], dict)
        else None
    )
    label = f"{section}[{index}]" + (f" ({code})" if code else "")
    reason = message.split(" - at ")[0]
    return f"{label}{rest}: {reason}"


@dataclass
class _Checker:
    spec: CatalogSpec
    problems: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def decimal(
        self, where: str, value: Number | None, *, places: int, positive: bool = False
    ) -> Decimal | None:
        if value is None:
            return None
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            self.add(where, f"must be a number, not {value!r}")
            return None
        if not number.is_finite() or number < 0 or (positive and number == 0):
            self.add(
                where, f"must be {'greater than 0' if positive else 'zero or more'}, not {value}"
            )
            return None
        if number != number.quantize(Decimal(1).scaleb(-places)):
            self.add(where, f"has more than {places} decimal places: {value}")
            return None
        return number


def _check(spec: CatalogSpec) -> Iterator[str]:
    checker = _Checker(spec)
    if spec.currency not in settings.CURRENCIES:
        checker.add(
            "currency",
            f"unsupported currency {spec.currency!r}; use one of "
            f"{', '.join(settings.CURRENCIES)} (CURRENCY_CHOICES in settings)",
        )
    meters = _check_meters(checker)
    card_codes = _check_rate_cards(checker, meters)
    _check_plans(checker, card_codes, set(meters))
    _check_packs(checker)
    yield from checker.problems


def _label(section: str, index: int, code: str) -> str:
    return f"{section}[{index}] ({code})"


def _unique(checker: _Checker, section: str, values: list[tuple[int, str]], what: str) -> None:
    seen: dict[str, int] = {}
    for index, value in values:
        if value in seen:
            checker.add(
                f"{section}[{index}]",
                f"{what} {value!r} is already used by {section}[{seen[value]}]",
            )
        seen[value] = index


def _check_meters(checker: _Checker) -> dict[str, list[str]]:
    meters = {m.code: list(m.dimensions) for m in Meter.objects.all()}
    specs = checker.spec.meters
    _unique(checker, "meters", [(i, m.code) for i, m in enumerate(specs)], "code")
    for index, meter in enumerate(specs):
        where = _label("meters", index, meter.code)
        if not CODE.match(meter.code):
            checker.add(f"{where}.code", "use lower-case letters, digits, _ and - (at most 64)")
        if not NAME.match(meter.event_name):
            checker.add(f"{where}.event_name", "use letters, digits, and . _ : - (at most 128)")
        for dimension in meter.dimensions:
            if not CODE.match(dimension):
                checker.add(
                    f"{where}.dimensions", f"{dimension!r}: use lower-case letters, digits, _ and -"
                )
        if len(set(meter.dimensions)) != len(meter.dimensions):
            checker.add(f"{where}.dimensions", "lists a dimension twice")
        _check_meter_properties(checker, where, meter)
        meters[meter.code] = meter.effective_dimensions()
    return meters


def _check_meter_properties(checker: _Checker, where: str, meter: MeterSpec) -> None:
    paths = [meter.value_property, *meter.dimension_properties]
    for path in paths:
        if len(path) > 128 or not PROPERTY_PATH.match(_property_path(path)):
            checker.add(
                f"{where}.{'value_property' if path is paths[0] else 'dimension_properties'}",
                f"{path!r}: a property name, or a dotted path like usage.input_tokens",
            )
    names = [_property_path(p).rsplit(".", 1)[-1] for p in meter.dimension_properties]
    if len(set(names)) != len(names):
        checker.add(f"{where}.dimension_properties", "two properties end in the same name")
    dimensions = meter.effective_dimensions()
    for name in names:
        if name not in dimensions:
            checker.add(
                f"{where}.dimension_properties",
                f"{name!r} is not among the meter's dimensions ({', '.join(dimensions)}); "
                "list it under dimensions",
            )
    for dimension in dimensions:
        if not CODE.match(dimension):
            checker.add(
                f"{where}.dimension_properties",
                f"{dimension!r}: a dimension is named with lower-case letters, digits, _ and -",
            )
    if len(meter.display_name) > 64:
        checker.add(f"{where}.display_name", "at most 64 characters")


def _check_rate_cards(checker: _Checker, meters: dict[str, list[str]]) -> set[str]:
    seen: dict[tuple[str, datetime], int] = {}
    counted = _counted_meters(checker.spec)
    for index, card in enumerate(checker.spec.rate_cards):
        where = _label("rate_cards", index, card.code)
        if not CODE.match(card.code):
            checker.add(f"{where}.code", "use lower-case letters, digits, _ and - (at most 64)")
        effective = _timestamp(card.effective_from)
        if effective is None:
            checker.add(
                f"{where}.effective_from",
                f"must be an RFC 3339 time like 2026-01-01T00:00:00Z, not {card.effective_from!r}",
            )
        elif (card.code, effective) in seen:
            checker.add(
                where,
                f"repeats rate_cards[{seen[(card.code, effective)]}] "
                "(same code and effective_from)",
            )
        else:
            seen[(card.code, effective)] = index
        if not card.rates:
            checker.add(f"{where}.rates", "needs at least one rate")
        for rate_index, rate in enumerate(card.rates):
            _check_rate(checker, f"{where}.rates[{rate_index}]", rate, meters)
            _check_rate_pricing(checker, f"{where}.rates[{rate_index}]", rate, counted)
        _check_ambiguous_rates(checker, where, card.rates)
    return {card.code for card in checker.spec.rate_cards} | set(
        RateCard.objects.values_list("code", flat=True)
    )


def _check_rate(
    checker: _Checker, where: str, rate: RateSpec, meters: dict[str, list[str]]
) -> None:
    if rate.meter not in meters:
        checker.add(f"{where}.meter", f"unknown meter {rate.meter!r}; define it under meters")
    else:
        unknown = set(rate.match) - set(meters[rate.meter])
        if unknown:
            checker.add(
                f"{where}.match",
                f"{', '.join(sorted(unknown))} is not a dimension of meter {rate.meter!r} "
                f"(its dimensions: {', '.join(meters[rate.meter]) or 'none'})",
            )
    if rate.per < 1:
        checker.add(f"{where}.per", f"must be 1 or more, not {rate.per}")
    elif rate.per > MAX_PER:
        checker.add(f"{where}.per", f"must be at most {MAX_PER}, not {rate.per}")


# The rates' `per` column is a PostgreSQL integer.
MAX_PER = 2**31 - 1


def _counted_meters(spec: CatalogSpec) -> set[str]:
    """Codes of the count meters (an event is one unit, whatever its value)."""
    counted = set(Meter.objects.filter(aggregation="count").values_list("code", flat=True))
    for meter in spec.meters:
        if meter.aggregation == "count":
            counted.add(meter.code)
        else:
            counted.discard(meter.code)
    return counted


def _check_rate_pricing(checker: _Checker, where: str, rate: RateSpec, counted: set[str]) -> None:
    checker.decimal(f"{where}.cost", rate.cost, places=8)
    if rate.tiers_mode is None and rate.tiers:
        checker.add(f"{where}.tiers_mode", "is required with tiers: graduated or volume")
    if rate.tiers_mode is not None and not rate.tiers:
        checker.add(f"{where}.tiers", f"{rate.tiers_mode} pricing needs at least one tier")
    if not rate.tiers:
        if rate.credits is None:
            if rate.tiers_mode is None:
                checker.add(f"{where}.credits", "is required (or give tiers_mode and tiers)")
        else:
            _check_rate_bound(checker, f"{where}.credits", rate.credits, rate, counted)
        return
    if rate.credits is not None:
        checker.add(f"{where}.credits", "a tiered rate is priced by its tiers; remove credits")
    if rate.round is not None:
        checker.add(f"{where}.round", "package rounding cannot be combined with tiers")
    meter = next((m for m in checker.spec.meters if m.code == rate.meter), None)
    aggregation = (
        meter.aggregation
        if meter
        else Meter.objects.filter(code=rate.meter).values_list("aggregation", flat=True).first()
    )
    if aggregation == "max":
        checker.add(
            f"{where}.tiers",
            f"meter {rate.meter!r} keeps the period's peak (max), which tiers cannot count; "
            "use a sum or count meter",
        )
    previous = Decimal(0)
    for index, tier in enumerate(rate.tiers):
        at = f"{where}.tiers[{index}]"
        _check_rate_bound(checker, f"{at}.credits", tier.credits, rate, counted)
        start = checker.decimal(f"{at}.from", tier.start, places=6)
        if start is not None and start > previous:
            checker.add(f"{at}.from", f"leaves a gap: units {previous} to {start} have no tier")
        elif start is not None and start < previous:
            checker.add(
                f"{at}.from", f"overlaps the tier before, which ends at {previous}: start at it"
            )
        last = index == len(rate.tiers) - 1
        if tier.up_to is None or tier.up_to == "inf":
            if not last:
                checker.add(f"{at}.up_to", "only the last tier may be open; give its last unit")
            continue
        up_to = checker.decimal(f"{at}.up_to", tier.up_to, places=6, positive=True)
        if up_to is None:
            continue
        if up_to <= previous:
            checker.add(
                f"{at}.up_to",
                f"must be above the tier before's {previous}: bounds increase tier by tier",
            )
        elif last:
            checker.add(f"{at}.up_to", "the last tier must be open: write up_to: inf or omit it")
        previous = max(previous, up_to)


def _check_rate_bound(
    checker: _Checker, where: str, value: Number, rate: RateSpec, counted: set[str]
) -> None:
    """A rate may charge no more than keeps one event's credits storable in the ledger."""
    credits = checker.decimal(where, value, places=6)
    if credits is None or not 1 <= rate.per <= MAX_PER:
        return
    if rate.meter in counted:
        units, note = Decimal(1), "an event of a count meter is 1 unit"
    else:
        units, note = MAX_EVENT_VALUE, f"an event may carry up to {MAX_EVENT_VALUE} units"
    most = _max_rate(rate.per, units)
    if credits > most:
        checker.add(
            where,
            f"{credits} per {rate.per} could price one event above {MAX_CREDITS} credits, "
            f"more than the ledger holds ({note}); charge at most {most} per {rate.per}",
        )


def _max_rate(per: int, units: Decimal) -> Decimal:
    # Enough digits for the division to be exact before it is rounded down.
    with localcontext(prec=60):
        most = (MAX_CREDITS * per / units).quantize(CREDIT_QUANTUM, ROUND_DOWN)
    return min(most, MAX_CREDITS)


def _check_ambiguous_rates(checker: _Checker, where: str, rates: list[RateSpec]) -> None:
    """Two rates of one meter, equally specific, that can both match one event."""
    for i, first in enumerate(rates):
        for j in range(i + 1, len(rates)):
            second = rates[j]
            if first.meter != second.meter or len(first.match) != len(second.match):
                continue
            shared = set(first.match) & set(second.match)
            if all(first.match[key] == second.match[key] for key in shared):
                combined = {**first.match, **second.match}
                checker.add(
                    f"{where}.rates[{j}]",
                    f"an event with {combined or 'any dimensions'} would match both rates[{i}] "
                    "and this rate equally; make one more specific or remove one",
                )


def _check_plans(checker: _Checker, card_codes: set[str], meter_codes: set[str]) -> None:
    _unique(checker, "plans", [(i, p.code) for i, p in enumerate(checker.spec.plans)], "code")
    for index, plan in enumerate(checker.spec.plans):
        where = _label("plans", index, plan.code)
        if not CODE.match(plan.code):
            checker.add(f"{where}.code", "use lower-case letters, digits, _ and - (at most 64)")
        checker.decimal(f"{where}.base_fee", plan.base_fee, places=2)
        checker.decimal(f"{where}.included_credits", plan.included_credits, places=6)
        if plan.rate_card not in card_codes:
            checker.add(
                f"{where}.rate_card",
                f"unknown rate card {plan.rate_card!r}; define it under rate_cards",
            )
        overage = plan.overage
        if overage.policy == "postpaid" and overage.price_per_credit is None:
            checker.add(f"{where}.overage.price_per_credit", "is required for the postpaid policy")
        checker.decimal(f"{where}.overage.price_per_credit", overage.price_per_credit, places=8)
        if overage.policy == "soft_limit" and overage.soft_limit_percent is None:
            checker.add(
                f"{where}.overage.soft_limit_percent", "is required for the soft_limit policy"
            )
        if overage.policy != "soft_limit" and overage.soft_limit_percent is not None:
            checker.add(
                f"{where}.overage.soft_limit_percent", "applies only to the soft_limit policy"
            )
        checker.decimal(f"{where}.overage.soft_limit_percent", overage.soft_limit_percent, places=2)
        if plan.rollover is not None:
            checker.decimal(f"{where}.rollover.max_credits", plan.rollover.max_credits, places=6)
        _check_alerts(checker, f"{where}.alerts", plan.alerts)
        _check_features(checker, f"{where}.features", plan.features, meter_codes)
        policy = plan.past_due_policy
        if isinstance(policy, PastDueSpec) and not 0 <= policy.deny_after_days <= 365:
            checker.add(
                f"{where}.past_due_policy.deny_after_days",
                f"must be 0 to 365 days, not {policy.deny_after_days}",
            )


def _check_features(
    checker: _Checker,
    where: str,
    features: dict[str, bool | MeteredFeatureSpec],
    meter_codes: set[str],
) -> None:
    for code, feature in features.items():
        if not CODE.match(code):
            checker.add(
                f"{where}.{code}",
                "a feature code: lower-case letters, digits, _ and - (at most 64)",
            )
        if isinstance(feature, bool):
            continue
        if feature.meter not in meter_codes:
            checker.add(
                f"{where}.{code}.meter", f"unknown meter {feature.meter!r}; define it under meters"
            )
        checker.decimal(f"{where}.{code}.limit", feature.limit, places=6)


def _check_alerts(checker: _Checker, where: str, alerts: AlertsSpec) -> None:
    thresholds = alerts.usage_thresholds
    for threshold in thresholds:
        if not 1 <= threshold <= 100:
            checker.add(
                f"{where}.usage_thresholds",
                f"{threshold} is not a whole percentage from 1 to 100",
            )
    if len(set(thresholds)) != len(thresholds):
        checker.add(f"{where}.usage_thresholds", "lists a threshold twice")
    if len(thresholds) > MAX_USAGE_THRESHOLDS:
        checker.add(
            f"{where}.usage_thresholds",
            f"lists {len(thresholds)} thresholds; at most {MAX_USAGE_THRESHOLDS}",
        )
    checker.decimal(f"{where}.low_balance_credits", alerts.low_balance_credits, places=6)


def _check_packs(checker: _Checker) -> None:
    packs = checker.spec.credit_packs
    _unique(checker, "credit_packs", [(i, p.code) for i, p in enumerate(packs)], "code")
    for index, pack in enumerate(packs):
        where = _label("credit_packs", index, pack.code)
        if not CODE.match(pack.code):
            checker.add(f"{where}.code", "use lower-case letters, digits, _ and - (at most 64)")
        checker.decimal(f"{where}.credits", pack.credits, places=6, positive=True)
        checker.decimal(f"{where}.price", pack.price, places=2)
        if pack.expires_after_days is not None and pack.expires_after_days < 1:
            checker.add(
                f"{where}.expires_after_days",
                "must be 1 or more; omit it for credits that never expire",
            )


def _timestamp(value: object) -> datetime | None:
    if isinstance(value, datetime):
        moment: datetime | None = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = parse_datetime(value.strip())
    else:
        return None
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- applying -------------------------------------------------------------------------


def load(text: str, *, now: datetime | None = None) -> list[str]:
    """Apply a catalog file; return one line per change (none when nothing changed)."""
    spec = parse(text)
    now = now or timezone.now()
    with transaction.atomic():
        changes: list[str] = []
        meters = {m.code: _apply_meter(m, changes) for m in spec.meters}
        meters.update({m.code: m for m in Meter.objects.exclude(code__in=meters)})
        for card in spec.rate_cards:
            _apply_rate_card(card, meters, now, spec.currency, changes)
        for plan in spec.plans:
            _apply_plan(plan, spec.currency, changes)
        for pack in spec.credit_packs:
            _apply_pack(pack, spec.currency, changes)
    return changes


def _apply_meter(spec: MeterSpec, changes: list[str]) -> Meter:
    values = {
        "event_name": spec.event_name,
        "aggregation": spec.aggregation,
        "unit": spec.unit,
        "dimensions": spec.effective_dimensions(),
        "value_property": _property_path(spec.value_property),
        "dimension_properties": [_property_path(p) for p in spec.dimension_properties],
        "display_name": spec.display_name,
    }
    meter, created = Meter.objects.get_or_create(code=spec.code, defaults=values)
    if created:
        changes.append(f"meter {spec.code}: created")
    elif any(getattr(meter, key) != value for key, value in values.items()):
        Meter.objects.filter(pk=meter.pk).update(**values)
        changes.append(f"meter {spec.code}: updated")
    return meter


def _rate_values(rate: RateSpec) -> dict[str, Any]:
    """A rate as stored: tiers normalized, so the same tiers written another way are no
    change; a tiered rate's ``credits`` is its highest tier price (what holds reserve)."""
    tiers: list[dict[str, str | None]] = [
        {
            "up_to": None if t.up_to in (None, "inf") else _number(Decimal(str(t.up_to))),
            "credits": _number(Decimal(str(t.credits))),
        }
        for t in rate.tiers
    ]
    highest = max((Decimal(str(t.credits)) for t in rate.tiers), default=None)
    credits = highest if highest is not None else Decimal(str(rate.credits))
    return {
        "match": dict(rate.match),
        "credits": credits,
        "per": rate.per,
        "tiers_mode": rate.tiers_mode or "",
        "tiers": tiers,
        "round_up": rate.round == "up",
        "cost": Decimal(str(rate.cost)) if rate.cost is not None else None,
    }


_RateRow = tuple[Any, ...]


def _row(meter: str, values: dict[str, Any]) -> _RateRow:
    tiers = tuple((t["up_to"], Decimal(t["credits"])) for t in values["tiers"])
    cost = values["cost"]
    return (
        meter,
        tuple(sorted(values["match"].items())),
        values["credits"],
        values["per"],
        values["tiers_mode"],
        tiers,
        values["round_up"],
        cost.normalize() if cost is not None else None,
    )


def _rate_rows(spec: RateCardSpec) -> list[_RateRow]:
    return sorted((_row(r.meter, _rate_values(r)) for r in spec.rates), key=repr)


def _version_rows(version: RateCardVersion) -> list[_RateRow]:
    return sorted(
        (
            _row(
                r.meter.code,
                {
                    "match": r.match,
                    "credits": r.credits,
                    "per": r.per,
                    "tiers_mode": r.tiers_mode,
                    "tiers": r.tiers,
                    "round_up": r.round_up,
                    "cost": as_money(r.cost).amount if r.cost is not None else None,
                },
            )
            for r in version.rates.select_related("meter")
        ),
        key=repr,
    )


def _apply_rate_card(
    spec: RateCardSpec, meters: dict[str, Meter], now: datetime, currency: str, changes: list[str]
) -> None:
    card, _ = RateCard.objects.get_or_create(code=spec.code)
    effective = _timestamp(spec.effective_from)
    assert effective is not None  # checked by parse()
    wanted = _rate_rows(spec)
    exact = card.versions.filter(effective_from=effective).first()
    if exact is not None and _version_rows(exact) == wanted:
        return
    derived = card.versions.filter(source_effective_from=effective).order_by("-effective_from")
    if any(_version_rows(v) == wanted for v in derived[:1]):
        return
    card_in_use = _rate_card_in_use(card)
    if exact is not None and not (card_in_use and exact.effective_from <= now):
        exact.rates.all().delete()
        _create_rates(exact, spec, meters, currency)
        changes.append(f"rate card {spec.code} from {effective:%Y-%m-%d}: updated (not yet in use)")
        return
    # Events already rated keep their rates: a change to a card in use starts now at the
    # earliest, never in the past.
    starts = effective if not card_in_use or effective > now else now
    version = RateCardVersion.objects.create(
        rate_card=card,
        version=(card.versions.aggregate(v=Max("version"))["v"] or 0) + 1,
        effective_from=starts,
        source_effective_from=effective,
    )
    _create_rates(version, spec, meters, currency)
    suffix = " (the card is in use, so it starts now)" if starts != effective else ""
    changes.append(
        f"rate card {spec.code}: version {version.version} effective "
        f"{starts:%Y-%m-%dT%H:%M:%SZ}{suffix}"
    )


def _rate_card_in_use(card: RateCard) -> bool:
    return SubscriptionPeriod.objects.filter(plan_version__rate_card=card).exists()


def _create_rates(
    version: RateCardVersion, spec: RateCardSpec, meters: dict[str, Meter], currency: str
) -> None:
    rates = []
    for rate in spec.rates:
        values = _rate_values(rate)
        cost = values.pop("cost")
        rates.append(
            Rate(
                version=version,
                meter=meters[rate.meter],
                cost=Money(cost, currency) if cost is not None else None,  # type: ignore[misc]
                **values,
            )
        )
    Rate.objects.bulk_create(rates)


def _plan_values(spec: PlanSpec, currency: str) -> dict[str, Any]:
    overage = spec.overage
    price = overage.price_per_credit
    percent = overage.soft_limit_percent
    low = spec.alerts.low_balance_credits
    return {
        "name": spec.name,
        "interval": spec.interval,
        "base_fee": Money(Decimal(str(spec.base_fee)), currency),
        "included_credits": Decimal(str(spec.included_credits)),
        "rate_card": RateCard.objects.get(code=spec.rate_card),
        "overage_policy": overage.policy,
        "soft_limit_percent": Decimal(str(percent)) if percent is not None else None,
        "overage_price_per_credit": Money(Decimal(str(price)), currency)
        if price is not None
        else None,
        "rollover_max_credits": Decimal(str(spec.rollover.max_credits)) if spec.rollover else None,
        # Sorted, so the same thresholds in another order are no change.
        "alert_usage_thresholds": sorted(spec.alerts.usage_thresholds),
        "alert_low_balance_credits": Decimal(str(low)) if low is not None else None,
        "features": _feature_values(spec.features),
        "past_due_deny_after_days": spec.past_due_policy.deny_after_days
        if isinstance(spec.past_due_policy, PastDueSpec)
        else None,
    }


def _feature_values(features: dict[str, bool | MeteredFeatureSpec]) -> dict[str, Any]:
    """As stored on the version: limits normalized ("100.0" is "100"), so the same
    features written another way are no change."""
    return {
        code: feature
        if isinstance(feature, bool)
        else {"meter": feature.meter, "limit": _number(Decimal(str(feature.limit)))}
        for code, feature in sorted(features.items())
    }


def _apply_plan(spec: PlanSpec, currency: str, changes: list[str]) -> None:
    plan, created = Plan.objects.get_or_create(code=spec.code, defaults={"public": spec.public})
    if not created and plan.public != spec.public:
        Plan.objects.filter(pk=plan.pk).update(public=spec.public)
        changes.append(f"plan {spec.code}: {'public' if spec.public else 'no longer public'}")
    values = _plan_values(spec, currency)
    latest = plan.versions.order_by("-version").first()
    if latest is not None and all(getattr(latest, key) == value for key, value in values.items()):
        return
    if latest is not None and not _plan_version_in_use(latest):
        for key, value in values.items():
            setattr(latest, key, value)
        latest.save()
        changes.append(f"plan {spec.code}: version {latest.version} updated (not yet in use)")
        return
    version = PlanVersion.objects.create(
        plan=plan, version=(latest.version + 1) if latest else 1, **values
    )
    suffix = " (subscriptions stay on the version they have)" if latest else ""
    changes.append(f"plan {spec.code}: version {version.version} created{suffix}")


def _plan_version_in_use(version: PlanVersion) -> bool:
    return (
        version.subscriptions.exists()
        or SubscriptionPeriod.objects.filter(plan_version=version).exists()
    )


def _apply_pack(spec: PackSpec, currency: str, changes: list[str]) -> None:
    # Purchases copy the price and credits they were sold at, so packs are edited in place.
    values = {
        "name": spec.name,
        "credits": Decimal(str(spec.credits)),
        "price": Money(Decimal(str(spec.price)), currency),
        "expires_after_days": spec.expires_after_days,
        "active": True,
    }
    pack, created = CreditPack.objects.get_or_create(code=spec.code, defaults=values)
    if created:
        changes.append(f"credit pack {spec.code}: created")
    elif any(getattr(pack, key) != value for key, value in values.items()):
        for key, value in values.items():
            setattr(pack, key, value)
        pack.save()
        changes.append(f"credit pack {spec.code}: updated")


# --- dumping --------------------------------------------------------------------------


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f")


def dump() -> str:
    """The current catalog in the load format: every rate card version, each plan's latest."""
    plans = [
        p.versions.select_related("rate_card").order_by("-version").first()
        for p in Plan.objects.order_by("code")
    ]
    currency = next((str(as_money(v.base_fee).currency) for v in plans if v is not None), "USD")
    document: dict[str, Any] = {
        "currency": currency,
        "meters": [_dump_meter(m) for m in Meter.objects.order_by("code")],
        "rate_cards": [
            _dump_rate_card(v)
            for v in RateCardVersion.objects.select_related("rate_card").order_by(
                "rate_card__code", "effective_from"
            )
        ],
        "plans": [_dump_plan(v) for v in plans if v is not None],
        "credit_packs": [
            _dump_pack(p) for p in CreditPack.objects.filter(active=True).order_by("code")
        ],
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _dump_meter(meter: Meter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": meter.code,
        "event_name": meter.event_name,
        "aggregation": meter.aggregation,
        "unit": meter.unit,
    }
    if meter.dimensions:
        out["dimensions"] = list(meter.dimensions)
    if meter.value_property != "value":
        out["value_property"] = meter.value_property
    if meter.dimension_properties:
        out["dimension_properties"] = list(meter.dimension_properties)
    if meter.display_name:
        out["display_name"] = meter.display_name
    return out


def _dump_rate_card(version: RateCardVersion) -> dict[str, Any]:
    rates = []
    for rate in version.rates.select_related("meter").order_by("pk"):
        row: dict[str, Any] = {"meter": rate.meter.code}
        if rate.match:
            row["match"] = dict(rate.match)
        if rate.tiers_mode:
            row["tiers_mode"] = rate.tiers_mode
            row["tiers"] = [
                {"up_to": t["up_to"] if t["up_to"] is not None else "inf", "credits": t["credits"]}
                for t in rate.tiers
            ]
        else:
            row["credits"] = _number(rate.credits)
        row["per"] = rate.per
        if rate.round_up:
            row["round"] = "up"
        if rate.cost is not None:
            row["cost"] = _number(as_money(rate.cost).amount)
        rates.append(row)
    return {
        "code": version.rate_card.code,
        "effective_from": version.effective_from.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if version.effective_from.microsecond
        else version.effective_from.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rates": rates,
    }


def _dump_plan(version: PlanVersion) -> dict[str, Any]:
    overage: dict[str, Any] = {"policy": version.overage_policy}
    if version.overage_price_per_credit is not None:
        overage["price_per_credit"] = _number(as_money(version.overage_price_per_credit).amount)
    if version.soft_limit_percent is not None:
        overage["soft_limit_percent"] = _number(version.soft_limit_percent)
    out: dict[str, Any] = {
        "code": version.plan.code,
        "name": version.name,
        "interval": version.interval,
        "base_fee": f"{as_money(version.base_fee).amount:.2f}",
        "included_credits": _number(version.included_credits),
        "rate_card": version.rate_card.code,
        "overage": overage,
    }
    if version.plan.public:
        out["public"] = True
    if version.rollover_max_credits is not None:
        out["rollover"] = {"max_credits": _number(version.rollover_max_credits)}
    alerts = _dump_alerts(version)
    if alerts:
        out["alerts"] = alerts
    if version.past_due_deny_after_days is not None:
        out["past_due_policy"] = {"deny_after_days": version.past_due_deny_after_days}
    if version.features:
        # jsonb keeps its own key order: written back as the catalog spells them.
        out["features"] = {
            code: value
            if isinstance(value, bool)
            else {"meter": value["meter"], "limit": value["limit"]}
            for code, value in version.features.items()
        }
    return out


def _dump_alerts(version: PlanVersion) -> dict[str, Any]:
    """Only what differs from the defaults, so a file without ``alerts`` dumps without."""
    out: dict[str, Any] = {}
    if tuple(version.alert_usage_thresholds) != DEFAULT_USAGE_THRESHOLDS:
        out["usage_thresholds"] = list(version.alert_usage_thresholds)
    if version.alert_low_balance_credits is not None:
        out["low_balance_credits"] = _number(version.alert_low_balance_credits)
    return out


def _dump_pack(pack: CreditPack) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": pack.code,
        "name": pack.name,
        "credits": _number(pack.credits),
        "price": f"{as_money(pack.price).amount:.2f}",
    }
    if pack.expires_after_days is not None:
        out["expires_after_days"] = pack.expires_after_days
    return out
