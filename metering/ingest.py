"""The ingest hot path: validate a batch of meter events and store it durably.

Validation is plain Python over the decoded JSON rather than a serializer per event: it
runs a few microseconds an event, and each event gets its own precise rejection code.
Accepted events are written with one INSERT ... ON CONFLICT per batch, which also
enqueues them for rating in the same statement. The events table has no foreign keys to
customers and meters (their per-row checks cost a third of that statement's database
CPU): the batch's customers and meters are locked once each before it instead, and a
batch naming one that is gone by then is validated again, against what exists.

An event feeds every meter its ``event_name`` names (or the one ``meter`` it names).
With ``properties`` each meter reads its value and dimensions from them, so one LLM call
carrying input, output and cached tokens is one event. An event that feeds several
meters is stored as one part per meter, identified ``<identifier>#<meter code>`` and
linked by ``parent_identifier``; its parts are accepted, refused or found duplicate
together, in one statement, and each is rated exactly once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import msgspec
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ledger.errors import Conflict
from ledger.sql import execute_binary, model_columns, model_instance, numbers_array, texts_array
from ledger.units import CREDIT_QUANTUM
from metering.models import Authorization, RejectedEvent
from plans.models import MAX_EVENT_VALUE, Customer, Meter

MAX_EVENTS = 1000
IDENTIFIER = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces (fullmatch)
VALUE_QUANTUM = CREDIT_QUANTUM  # values carry the same six places as credits
REQUIRED = ("identifier", "customer", "timestamp")
KNOWN_FIELDS = {
    *REQUIRED,
    "event_name",
    "meter",
    "value",
    "dimensions",
    "properties",
    "workspace",
    "authorization",
}
PART_SEPARATOR = "#"

# Sorted keys: the same dimensions in another order are the same content.
_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str
    param: str | None = None


@dataclass
class Row:
    index: int
    identifier: str
    customer_id: int
    meter: Meter
    event_name: str
    timestamp: datetime
    value: Decimal
    dimensions: dict[str, str]
    workspace: str | None
    authorization_id: int | None
    content_hash: str
    parent_identifier: str | None = None


@dataclass
class Result:
    index: int
    identifier: str | None
    status: str
    error: Rejection | None = None
    meters: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "identifier": self.identifier,
            "status": self.status,
        }
        if self.meters is not None and self.status == "accepted":
            out["meters"] = self.meters
        if self.error is not None:
            out["error"] = {
                "code": self.error.code,
                "message": self.error.message,
                "param": self.error.param,
            }
        return out


@dataclass
class IngestOutcome:
    results: list[Result] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.count("accepted"),
            "duplicates": self.count("duplicate"),
            "rejected": self.count("rejected"),
            "results": [r.as_dict() for r in self.results],
        }


# --- validation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """What a caller has already read for a batch (a vendor-compatible endpoint resolves
    its own customer references and meter codes): ingest does not read it again."""

    customers: Mapping[str, Customer]  # by external_id, every customer the batch names
    meters: Sequence[Meter]  # every meter


class _Lookups:
    """Customers, meters and authorizations of one batch, fetched in three queries."""

    def __init__(self, events: Sequence[Any], known: Known | None = None) -> None:
        dicts = [e for e in events if isinstance(e, dict)]
        if known is not None:
            self.customers = {key: c.id for key, c in known.customers.items()}
        else:
            external_ids = {
                e["customer"]
                for e in dicts
                if isinstance(e.get("customer"), str) and "\x00" not in e["customer"]
            }
            # Ids only, as tuples: building a model instance per customer cost more than
            # the query (a batch of 100 events names up to 100 customers). Each customer
            # once: a batch of 1,000 events for one customer sends one name, not 1,000.
            self.customers = dict(execute_binary(_CUSTOMER_IDS, [list(external_ids)]))
        self.meters_by_code: dict[str, Meter] = {}
        self.meters: dict[str, list[Meter]] = {}
        meters = known.meters if known is not None else _meters()
        for meter in sorted(meters, key=lambda m: m.code):
            self.meters_by_code[meter.code] = meter
            self.meters.setdefault(meter.event_name, []).append(meter)
        auth_ids = {i for i in (_int(e.get("authorization")) for e in dicts) if i is not None}
        # Most batches name no authorization: no query to build.
        self.authorizations = (
            dict(
                Authorization.objects.filter(pk__in=auth_ids, hold__isnull=False).values_list(
                    "pk", "customer_id"
                )
            )
            if auth_ids
            else {}
        )


# Every meter (``Meter.objects.all()``), written once: every ingest request reads them,
# and compiling the queryset cost more than running it.
_METERS = f"SELECT {model_columns(Meter, 'm')} FROM {Meter._meta.db_table} m"


def _meters() -> list[Meter]:
    with connection.cursor() as cursor:
        cursor.execute(_METERS)
        return [model_instance(Meter, row)[0] for row in cursor.fetchall()]


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _reject(code: str, message: str, param: str | None = None) -> Rejection:
    return Rejection(code, message, param)


def validate(index: int, event: Any, lookups: _Lookups, now: datetime) -> list[Row] | Rejection:
    """The event's rows (one per meter it feeds), or why it is refused."""
    if not isinstance(event, dict):
        return _reject("missing_field", "each event must be a JSON object")
    for name in REQUIRED:
        if event.get(name) is None:
            return _reject("missing_field", f"{name} is required", name)
    if event.get("event_name") is None and event.get("meter") is None:
        return _reject("missing_field", "event_name is required", "event_name")
    if event.get("properties") is None and event.get("value") is None:
        return _reject("missing_field", "value (or properties) is required", "value")
    if not KNOWN_FIELDS.issuperset(event):
        name = sorted(set(event) - KNOWN_FIELDS)[0]
        return _reject(
            "invalid_request",
            f"unknown field {name!r}; allowed: {', '.join(sorted(KNOWN_FIELDS))}",
            name,
        )
    identifier = event["identifier"]
    if not isinstance(identifier, str) or not IDENTIFIER.fullmatch(identifier):
        return _reject(
            "invalid_identifier",
            "identifier must be 1 to 255 printable ASCII characters without spaces",
            "identifier",
        )
    customer_id = (
        lookups.customers.get(event["customer"]) if isinstance(event["customer"], str) else None
    )
    if customer_id is None:
        return _reject(
            "unknown_customer",
            f"no customer with external_id {event['customer']!r}; create it first",
            "customer",
        )
    meters = _meters_fed(event, lookups)
    if isinstance(meters, Rejection):
        return meters
    return _validate_content(index, event, identifier, customer_id, meters, lookups, now)


def _meters_fed(event: dict[str, Any], lookups: _Lookups) -> list[Meter] | Rejection:
    name, code = event.get("event_name"), event.get("meter")
    if code is not None:
        meter = lookups.meters_by_code.get(code) if isinstance(code, str) else None
        if meter is None:
            return _reject(
                "unknown_meter",
                f"no meter with code {code!r}; known: "
                f"{', '.join(sorted(lookups.meters_by_code)) or 'none'}",
                "meter",
            )
        if name is not None and name != meter.event_name:
            return _reject(
                "invalid_request",
                f"meter {code!r} is fed by events named {meter.event_name!r}, not {name!r}",
                "event_name",
            )
        return [meter]
    meters = lookups.meters.get(name) if isinstance(name, str) else None
    if not meters:
        return _reject(
            "unknown_event_name",
            f"no meter is fed by events named {name!r}; "
            f"known: {', '.join(sorted(lookups.meters)) or 'none'}",
            "event_name",
        )
    return meters


class _Common(NamedTuple):
    """What every row of one event shares."""

    identifier: str
    customer_id: int
    timestamp: datetime
    workspace: str | None
    authorization_id: int | None


def _validate_content(
    index: int,
    event: dict[str, Any],
    identifier: str,
    customer_id: int,
    meters: list[Meter],
    lookups: _Lookups,
    now: datetime,
) -> list[Row] | Rejection:
    timestamp = _timestamp(event["timestamp"], now)
    if isinstance(timestamp, Rejection):
        return timestamp
    workspace = event.get("workspace")
    if workspace is not None and not (_clean_text(workspace, 64) and workspace):
        return _reject(
            "invalid_request", "workspace must be a string of 1 to 64 characters", "workspace"
        )
    authorization_id = None
    if event.get("authorization") is not None:
        authorization_id = _int(event["authorization"])
        if authorization_id is None or lookups.authorizations.get(authorization_id) != customer_id:
            return _reject(
                "unknown_authorization",
                f"no authorization {event['authorization']!r} with a hold for this customer",
                "authorization",
            )
        if len(meters) > 1:
            return _reject(
                "invalid_request",
                f"an authorization is captured by an event of one meter; this one feeds "
                f"{', '.join(m.code for m in meters)}: name the meter (meter)",
                "authorization",
            )
    common = _Common(identifier, customer_id, timestamp, workspace, authorization_id)
    if event.get("properties") is not None:
        return _rows_from_properties(index, event, meters, common)
    if len(meters) > 1:
        # A plain event naming an event_name several meters share: its value and
        # dimensions are its properties.
        dimensions = event.get("dimensions")
        if dimensions is not None and not isinstance(dimensions, dict):
            return _reject(
                "invalid_dimensions", "dimensions must be an object of string values", "dimensions"
            )
        properties = {**(dimensions or {}), "value": event["value"]}
        return _rows_from_properties(index, {**event, "properties": properties}, meters, common)
    return _row_from_value(index, event, meters[0], common)


def _row_from_value(
    index: int, event: dict[str, Any], meter: Meter, common: _Common
) -> list[Row] | Rejection:
    value = _value(event["value"])
    if isinstance(value, Rejection):
        return value
    dimensions = _dimensions(event.get("dimensions"), meter)
    if isinstance(dimensions, Rejection):
        return dimensions
    return [_row(index, meter, common, value, dimensions, None)]


def _rows_from_properties(
    index: int, event: dict[str, Any], meters: list[Meter], common: _Common
) -> list[Row] | Rejection:
    properties = event["properties"]
    if not isinstance(properties, dict):
        return _reject("invalid_request", "properties must be a JSON object", "properties")
    if event.get("value") is not None or event.get("dimensions") is not None:
        return _reject(
            "invalid_request",
            "send either properties, or value with dimensions; not both",
            "properties",
        )
    rows = []
    several = len(meters) > 1
    for meter in meters:
        value = _property_value(properties, meter.value_property)
        if isinstance(value, Rejection):
            return value
        dimensions = _property_dimensions(properties, meter)
        if isinstance(dimensions, Rejection):
            return dimensions
        rows.append(
            _row(index, meter, common, value, dimensions, common.identifier if several else None)
        )
    return rows


def _row(
    index: int,
    meter: Meter,
    common: _Common,
    value: Decimal,
    dimensions: dict[str, str],
    parent: str | None,
) -> Row:
    identifier = common.identifier
    if parent is not None:
        identifier = f"{parent}{PART_SEPARATOR}{meter.code}"
    digest = _content_hash(
        meter.event_name,
        common.timestamp,
        value,
        dimensions,
        common.workspace,
        common.authorization_id,
    )
    return Row(
        index,
        identifier,
        common.customer_id,
        meter,
        meter.event_name,
        common.timestamp,
        value,
        dimensions,
        common.workspace,
        common.authorization_id,
        digest,
        parent,
    )


_MISSING = object()


def _property(properties: dict[str, Any], path: str) -> Any:
    """The property at a dotted path (``usage.input_tokens``), or ``_MISSING``."""
    found: Any = properties
    for part in path.split("."):
        if not isinstance(found, dict) or part not in found:
            return _MISSING
        found = found[part]
    return _MISSING if found is None else found


def _property_value(properties: dict[str, Any], path: str) -> Decimal | Rejection:
    raw = _property(properties, path)
    if raw is _MISSING:
        return _reject(
            "missing_property",
            f"properties has no {path!r}, where this event's meter reads its value",
            path,
        )
    value = _value(raw)
    if isinstance(value, Rejection):
        return Rejection(value.code, f"properties.{path}: {value.message}", path)
    return value


def _property_dimensions(properties: dict[str, Any], meter: Meter) -> dict[str, str] | Rejection:
    dimensions = {}
    for path in meter.dimension_properties or meter.dimensions:
        raw = _property(properties, path)
        if raw is _MISSING:
            continue
        if isinstance(raw, bool) or not isinstance(raw, (str, int, Decimal)):
            return _reject(
                "invalid_dimensions",
                f"properties.{path} is a dimension of meter {meter.code!r}: "
                "give a string or a number",
                path,
            )
        text = raw if isinstance(raw, str) else str(raw)
        if not _clean_text(text, 128):
            return _reject(
                "invalid_dimensions",
                f"properties.{path} must be at most 128 characters",
                path,
            )
        dimensions[path.rsplit(".", 1)[-1]] = text
    return dimensions


def _clean_text(value: Any, limit: int) -> bool:
    # PostgreSQL text cannot hold U+0000: such a string is refused, not stored.
    return isinstance(value, str) and len(value) <= limit and "\x00" not in value


def _value(raw: Any) -> Decimal | Rejection:
    if isinstance(raw, bool):
        return _reject("invalid_value", "value must be a number or a decimal string", "value")
    try:
        value = Decimal(raw) if isinstance(raw, (int, str, Decimal)) else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        return _reject("invalid_value", f"value must be a number, not {raw!r}", "value")
    if value < 0:
        return _reject(
            "invalid_value", "value must not be negative; cancel an event to correct it", "value"
        )
    # Compared before any arithmetic: quantizing 1e30 would raise, not round.
    if value > MAX_EVENT_VALUE:
        return _reject(
            "value_out_of_range",
            f"value is above the maximum of {MAX_EVENT_VALUE} per event; "
            "split the usage over several events",
            "value",
        )
    quantized = value.quantize(VALUE_QUANTUM)
    if value != quantized:
        return _reject("invalid_value", "value has more than 6 decimal places", "value")
    return quantized


def _dimensions(raw: Any, meter: Meter) -> dict[str, str] | Rejection:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not _clean_strings(raw):
        return _reject(
            "invalid_dimensions",
            "dimensions must be an object of string values (at most 128 characters)",
            "dimensions",
        )
    names = meter.dimensions
    for name in raw:
        if name not in names:
            return _reject(
                "invalid_dimensions",
                f"{', '.join(sorted(set(raw) - set(names)))} is not a dimension of meter "
                f"{meter.code!r} (its dimensions: {', '.join(names) or 'none'})",
                "dimensions",
            )
    return dict(raw)


def _clean_strings(mapping: dict[Any, Any]) -> bool:
    """Every key and value is text :func:`_clean_text` takes, at most 128 characters
    (one loop: this runs for every event of every batch)."""
    for key, value in mapping.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            return False
        if len(key) > 128 or len(value) > 128 or "\x00" in key or "\x00" in value:
            return False
    return True


def _parse_rfc3339(raw: str) -> datetime | None:
    # datetime.fromisoformat (C, and it takes "Z" since 3.11) covers RFC 3339 and is many
    # times faster than a regex; Django's parser catches the rest.
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        try:
            return parse_datetime(raw)
        except ValueError:
            return None


def _timestamp(raw: Any, now: datetime) -> datetime | Rejection:
    moment: datetime | None
    if isinstance(raw, (int, Decimal)) and not isinstance(raw, bool):
        try:
            moment = datetime.fromtimestamp(float(raw), tz=UTC)
        except (OverflowError, OSError, ValueError):
            moment = None
    elif isinstance(raw, str):
        moment = _parse_rfc3339(raw)
        if moment is not None and moment.tzinfo is None:
            return _reject(
                "invalid_timestamp",
                "timestamp needs a time zone, e.g. 2026-11-20T10:00:00Z",
                "timestamp",
            )
    else:
        moment = None
    if moment is None:
        return _reject(
            "invalid_timestamp",
            "timestamp must be RFC 3339 (2026-11-20T10:00:00Z) or Unix seconds",
            "timestamp",
        )
    if moment < now - timedelta(days=settings.METERING_MAX_EVENT_AGE_DAYS):
        return _reject(
            "timestamp_too_far_in_past",
            f"timestamp is more than {settings.METERING_MAX_EVENT_AGE_DAYS} days in the past",
            "timestamp",
        )
    if moment > now + timedelta(seconds=settings.METERING_MAX_EVENT_FUTURE_SECONDS):
        return _reject(
            "timestamp_in_future",
            f"timestamp is more than {settings.METERING_MAX_EVENT_FUTURE_SECONDS} seconds "
            "in the future; check the sender's clock",
            "timestamp",
        )
    return moment


def _content_hash(
    event_name: str,
    timestamp: datetime,
    value: Decimal,
    dimensions: Mapping[str, str],
    workspace: str | None,
    authorization_id: int | None,
) -> str:
    canonical = _encoder.encode(
        (
            event_name,
            timestamp.astimezone(UTC).isoformat(),
            str(value),
            dimensions,
            workspace,
            authorization_id,
        )
    )
    return hashlib.sha256(canonical).hexdigest()


# --- storing --------------------------------------------------------------------------

_INSERT = """
WITH rows AS (
    SELECT * FROM unnest(
        %b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::timestamptz[],
        %b::numeric[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[]
    ) AS t(customer_id, identifier, event_name, meter_id, ts, value, dimensions, workspace,
           authorization_id, content_hash, parent_identifier)
), keyed AS (
    -- The keys this batch wins: an identifier already stored, or being stored by a
    -- concurrent batch, is skipped here and classified afterwards.
    INSERT INTO metering_eventkey (customer_id, identifier, event_id)
    SELECT customer_id, identifier, metering_event_id(ts) FROM rows
    ON CONFLICT (customer_id, identifier) DO NOTHING
    RETURNING customer_id, identifier, event_id
), inserted AS (
    INSERT INTO metering_meterevent (
        id, customer_id, identifier, event_name, meter_id, timestamp, value, dimensions,
        workspace, authorization_id, content_hash, received_at, parent_identifier
    )
    SELECT k.event_id, r.customer_id, r.identifier, event_name, meter_id, ts, value,
           dimensions::jsonb, workspace, authorization_id, content_hash, %b, parent_identifier
    FROM rows r JOIN keyed k USING (customer_id, identifier)
    RETURNING id, customer_id, identifier
), queued AS (
    INSERT INTO metering_ratingqueue (event_id, customer_id, enqueued_at)
    SELECT id, customer_id, %b FROM inserted
)
SELECT customer_id, identifier FROM inserted
"""

# What a foreign-key check takes on its parent row (KEY SHARE: a concurrent delete waits,
# an update of other columns does not), once per customer and meter of the batch rather
# than once per event. Fewer rows than asked for: one was deleted since the look-up.
_LOCK_PARENTS = """
SELECT
    (SELECT count(*) FROM (
        SELECT FROM plans_customer WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE
    ) AS customers),
    (SELECT count(*) FROM (
        SELECT FROM plans_meter WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE
    ) AS meters)
"""

_CUSTOMER_IDS = "SELECT external_id, id FROM plans_customer WHERE external_id = ANY(%b::text[])"

_EXISTING = """
SELECT k.customer_id, k.identifier, e.content_hash
FROM metering_eventkey k JOIN metering_meterevent e ON e.id = k.event_id
WHERE (k.customer_id, k.identifier) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))
"""


class ParentGone(Conflict):
    """A customer or meter the batch was validated against no longer exists. Ingest then
    validates the batch again; this escapes only if it happens again meanwhile."""


def events_ingest(
    *, events: Sequence[Any], now: datetime | None = None, known: Known | None = None
) -> IngestOutcome:
    """Validate and store a batch; return one result per event, in order."""
    now = now or timezone.now()
    try:
        return _ingest(events, _Lookups(events, known), now)
    except ParentGone:
        # Deleted since the look-up (or ``known`` named one that is gone): nothing was
        # stored. Validated again, the events naming it are refused as unknown.
        return _ingest(events, _Lookups(events), now)


def _ingest(events: Sequence[Any], lookups: _Lookups, now: datetime) -> IngestOutcome:
    outcome = IngestOutcome()
    rows: list[Row] = []
    seen: dict[tuple[int, str], str] = {}
    for index, event in enumerate(events):
        checked = validate(index, event, lookups, now)
        if isinstance(checked, Rejection):
            outcome.results.append(Result(index, _identifier_of(event), "rejected", checked))
            continue
        first = checked[0]
        identifier = first.parent_identifier or first.identifier
        # A repeat within the batch compares the whole event: every part's content.
        key, digest = (first.customer_id, identifier), "".join(r.content_hash for r in checked)
        earlier = seen.get(key)
        if earlier is not None:
            status = _repeat_status(earlier, digest)
            outcome.results.append(Result(index, identifier, status.status, status.error))
            continue
        seen[key] = digest
        rows.extend(checked)
        meters = [r.meter.code for r in checked]
        outcome.results.append(Result(index, identifier, "accepted", meters=meters))
    with transaction.atomic():
        stored = _insert(rows, now)
        _classify_existing(rows, stored, outcome)
        _store_rejections(events, outcome, now)
    return outcome


def _identifier_of(event: Any) -> str | None:
    identifier = event.get("identifier") if isinstance(event, dict) else None
    return identifier if isinstance(identifier, str) else None


def _repeat_status(stored_hash: str, content_hash: str) -> Result:
    if stored_hash == content_hash:
        return Result(0, None, "duplicate")
    return Result(
        0,
        None,
        "rejected",
        Rejection(
            "identifier_conflict",
            "this identifier was already used for an event with different content; "
            "use a new identifier for a new event",
            "identifier",
        ),
    )


def _insert(rows: list[Row], now: datetime) -> set[tuple[int, str]]:
    if not rows:
        return set()
    # Rows go in key order: two batches sharing identifiers in different orders would
    # otherwise wait on each other's uncommitted rows and deadlock.
    rows = sorted(rows, key=lambda r: (r.customer_id, r.identifier))
    # Array literals (ledger.sql) but for the timestamps, whose own dumper is as quick.
    columns = (
        numbers_array([r.customer_id for r in rows]),
        texts_array([r.identifier for r in rows]),
        texts_array([r.event_name for r in rows]),
        numbers_array([r.meter.id for r in rows]),
        [r.timestamp for r in rows],
        numbers_array([r.value for r in rows]),
        texts_array([_encoder.encode(r.dimensions).decode() for r in rows]),
        texts_array([r.workspace for r in rows]),
        numbers_array([r.authorization_id for r in rows]),
        texts_array([r.content_hash for r in rows]),
        texts_array([r.parent_identifier for r in rows]),
    )
    _lock_parents(rows)
    # Server-side binding: Django's client-side binding renders the arrays as escaped
    # text in Python, which costs more than the insert itself.
    inserted = execute_binary(_INSERT, [*columns, now, now])
    return {(customer_id, identifier) for customer_id, identifier in inserted}


def _lock_parents(rows: list[Row]) -> None:
    """Keep the batch's customers and meters from being deleted until it commits."""
    customers = sorted({r.customer_id for r in rows})
    meters = sorted({r.meter.id for r in rows})
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_PARENTS, [customers, meters])
        found = cursor.fetchone()
    if found != (len(customers), len(meters)):
        raise ParentGone(
            "a customer or meter this batch names was deleted while it was being stored; "
            "send the batch again"
        )


def _classify_existing(
    rows: list[Row], stored: set[tuple[int, str]], outcome: IngestOutcome
) -> None:
    """Rows the insert skipped were there already: a duplicate, or a conflict."""
    skipped = [r for r in rows if (r.customer_id, r.identifier) not in stored]
    if not skipped:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _EXISTING, [[r.customer_id for r in skipped], [r.identifier for r in skipped]]
        )
        existing = {(c, i): h for c, i, h in cursor.fetchall()}
    # The parts of one event are all new (accepted), or all there already: a duplicate
    # when every part has the content stored, a conflict when any differs. Parts new
    # beside stored ones mean a meter was added for the event name since: the new
    # parts are charged and the event counts as accepted.
    new_parts = {r.index for r in rows if (r.customer_id, r.identifier) in stored}
    for row in skipped:
        status = _repeat_status(existing[(row.customer_id, row.identifier)], row.content_hash)
        result = outcome.results[row.index]
        if status.error is not None:
            result.status, result.error = status.status, status.error
        elif row.index not in new_parts and result.error is None:
            result.status = status.status


def _store_rejections(events: Sequence[Any], outcome: IngestOutcome, now: datetime) -> None:
    RejectedEvent.objects.bulk_create(
        _rejected_record(events[r.index], r.error, now)
        for r in outcome.results
        if r.status == "rejected" and r.error is not None
    )


def rejections_store(
    rejected: Sequence[tuple[dict[str, Any], Rejection]], now: datetime | None = None
) -> None:
    """Keep events refused before ingest saw them (a vendor-compatible endpoint could not
    translate them) for the unmatched-events report, as ingest keeps its own. Each comes
    as a native-shaped summary (customer, identifier, event_name, and the event as sent)."""
    if rejected:
        moment = now or timezone.now()
        RejectedEvent.objects.bulk_create(
            _rejected_record(event, rejection, moment) for event, rejection in rejected
        )


def _without_nul(value: Any) -> Any:
    """The payload as JSON PostgreSQL can store: U+0000 replaced, everything else kept."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(str(k)): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _rejected_record(event: Any, rejection: Rejection, now: datetime) -> RejectedEvent:
    payload = _without_nul(event if isinstance(event, dict) else {"event": event})
    return RejectedEvent(
        customer_external_id=str(payload.get("customer") or "")[:255],
        identifier=str(payload.get("identifier") or "")[:255],
        event_name=str(payload.get("event_name") or "")[:255],
        code=rejection.code,
        message=_without_nul(rejection.message),
        param=_without_nul(rejection.param or "")[:64],
        payload=json.loads(json.dumps(payload, default=str)),
        received_at=now,
    )
