"""Bulk load data for measuring the portal at scale: customers, events, ratings, rollups.

Customers and subscriptions go through the services; the bulk rows (meter events, their
ratings, hourly rollups) are written with PostgreSQL ``COPY`` in chunks. Ledger debits are
summarized: one consume per customer and run for the credits its events were rated at,
instead of one debit per event.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from ledger import services as ledger
from ledger.models import Account
from metering.models import PeriodUsage
from metering.partitions import SEQUENCE_BITS, month_index, month_partition_make
from metering.rating import dimensions_key
from plans import catalog
from plans.models import Customer, Meter, Plan, Rate, RateCardVersion, SubscriptionPeriod
from plans.services import customer_create, subscription_start

PREFIX = "load-"
EVENT_NAME = "llm.tokens"
METER = "llm_tokens"
COMBOS = (("large", "input"), ("large", "output"), ("small", "input"), ("small", "output"))
VALUES = (300, 800, 2_000, 6_000, 20_000)
PLANS = ("starter", "pro", "team")
CHUNK = 100_000
MICRO = 1_000_000  # credits have six decimal places: sums are kept in integer millionths
DEMO_CATALOG = Path(settings.BASE_DIR) / "docs" / "examples" / "catalog.yaml"
EVENT_COLUMNS = (
    "id, customer_id, identifier, event_name, meter_id, timestamp, value, dimensions, "
    "workspace, authorization_id, content_hash, received_at"
)
RATING_COLUMNS = (
    "event_id, status, credits, units, rate_id, period_id, prior_period_adjustment, "
    "error_code, error_message, rated_at"
)


@dataclass(frozen=True)
class Target:
    customer_id: int
    account_id: int
    period_id: int
    period_start: datetime


def _micro_text(micro: int) -> str:
    return f"{micro // MICRO}.{micro % MICRO:06d}"


class Command(BaseCommand):
    help = (
        "Fill the database with load data for the portal: N customers (prefix 'load-') "
        "with subscriptions, and M meter events spread over the past D days with their "
        "ratings, hourly usage rollups and period usage, written with COPY. Ledger debits "
        "are summarized: one consume entry per customer and run for the credits its events "
        "were rated at, not one per event. Refuses to run when load customers exist, "
        "unless --more, which adds M events to the existing load customers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--customers", type=int, default=1000)
        parser.add_argument("--events", type=int, default=10_000_000)
        parser.add_argument(
            "--days",
            type=int,
            default=27,
            help="spread events over the past D days (at most 27: one billing period)",
        )
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--rebuild-from",
            type=int,
            default=500_000,
            help="from this many events on, drop the secondary (non-unique) indexes of the "
            "event, rating and rollup tables for the load and build them again after it",
        )
        parser.add_argument(
            "--more",
            action="store_true",
            help="add --events events to the load customers a previous run created",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        customers, events, days = options["customers"], options["events"], options["days"]
        if customers < 1 or events < 0 or not 1 <= days <= 27:
            raise CommandError("need --customers >= 1, --events >= 0 and 1 <= --days <= 27")
        rng = random.Random(options["seed"] + (7919 if options["more"] else 0))
        now = timezone.now().replace(microsecond=0)
        existing = Customer.objects.filter(external_id__startswith=PREFIX).count()
        if options["more"]:
            if not existing:
                raise CommandError("--more: no load customers yet; run without --more first")
        elif existing:
            raise CommandError(
                f"load data is already present ({existing} customers named '{PREFIX}*'); "
                "use --more to add events to them, or start from an empty database"
            )
        else:
            self._customers(customers, now, days)
        targets = self._targets(now)
        started = time.monotonic()
        rebuild = events >= options["rebuild_from"]
        # One transaction: a failed run leaves no events and every index in place.
        with transaction.atomic():
            dropped = self._drop_indexes() if rebuild else []
            rollups, credits = self._events(targets, events, days, now, rng)
            self._rollups(rollups, targets, now)
            with connection.cursor() as cursor:
                # Back to normal: pending key checks run now, before any index is built.
                cursor.execute("SET LOCAL session_replication_role = origin")
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            self._rebuild_indexes(dropped)
            self._usage(credits, targets, now)
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"load data: {len(targets)} customers, {events:,} events in {elapsed:.1f} s "
            f"({events / elapsed if elapsed else 0:,.0f} events/s with ratings and rollups)"
        )

    # --- customers ---------------------------------------------------------------------

    def _drop_indexes(self) -> list[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = ANY(ARRAY['metering_meterevent'::regclass, "
                "'metering_eventrating'::regclass, 'metering_usagerollup'::regclass]) "
                "AND NOT i.indisunique AND NOT i.indisprimary ORDER BY c.relname"
            )
            found = [(str(name), str(definition)) for name, definition in cursor.fetchall()]
            for name, _ in found:
                cursor.execute(f'DROP INDEX "{name}"')
        self.stdout.write(f"  dropped {len(found)} secondary indexes for the load")
        return found

    def _rebuild_indexes(self, dropped: list[tuple[str, str]]) -> None:
        if not dropped:
            return
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for _, definition in dropped:
                # A partitioned table's index reads "ON ONLY <table>": built so, it would
                # be the parent's alone, and no partition would have it.
                cursor.execute(definition.replace(" ON ONLY ", " ON ", 1))
        elapsed = time.monotonic() - started
        self.stdout.write(f"  rebuilt {len(dropped)} indexes in {elapsed:.1f} s")

    def _customers(self, count: int, now: datetime, days: int) -> None:
        if not Plan.objects.exists():
            catalog.load(DEMO_CATALOG.read_text())
        plans = {p.code: p for p in Plan.objects.filter(code__in=PLANS)}
        if len(plans) != len(PLANS):
            raise CommandError(f"the catalog needs the plans {', '.join(PLANS)}")
        started = time.monotonic()
        # The anchor a day before the events' window: one period covers all of them.
        anchor = now - timedelta(days=days + 1)
        for n in range(count):
            customer = customer_create(
                external_id=f"{PREFIX}{n:05d}", name=f"Load {n}", email=f"load{n}@load.test"
            )
            subscription_start(
                customer=customer,
                plan=plans[PLANS[n % len(PLANS)]],
                actor="system:load",
                start_at=anchor,
            )
            if (n + 1) % 200 == 0 or n + 1 == count:
                rate = (n + 1) / (time.monotonic() - started)
                self.stdout.write(f"  customers: {n + 1:,}/{count:,} ({rate:,.0f}/s)")

    def _targets(self, now: datetime) -> list[Target]:
        periods = (
            SubscriptionPeriod.objects.filter(
                subscription__customer__external_id__startswith=PREFIX,
                start__lte=now,
                end__gt=now,
            )
            .select_related("subscription__customer")
            .order_by("subscription__customer_id")
        )
        targets = [
            Target(
                customer_id=p.subscription.customer_id,
                account_id=p.subscription.customer.account_id,
                period_id=p.pk,
                period_start=p.start,
            )
            for p in periods
        ]
        if not targets:
            raise CommandError("no load customer has a current period")
        return targets

    # --- events and ratings ------------------------------------------------------------

    def _rates(self, meter: Meter, now: datetime) -> list[tuple[int, Decimal, int]]:
        """(rate id, credits, per) for each model / token type, the most specific match."""
        version = (
            RateCardVersion.objects.filter(rate_card__code="standard", effective_from__lte=now)
            .order_by("-effective_from")
            .first()
        )
        rates = list(Rate.objects.filter(version=version, meter=meter))
        found = []
        for model, token_type in COMBOS:
            dims = {"model": model, "token_type": token_type}
            matching = [r for r in rates if all(dims.get(k) == v for k, v in r.match.items())]
            if not matching:
                raise CommandError(f"no rate for {model}/{token_type}")
            best = max(matching, key=lambda r: len(r.match))
            found.append((best.pk, best.credits, best.per))
        return found

    def _events(
        self, targets: list[Target], count: int, days: int, now: datetime, rng: random.Random
    ) -> tuple[dict[tuple[int, int, int], list[int]], dict[int, int]]:
        meter = Meter.objects.get(code=METER)
        rates = self._rates(meter, now)
        # credits[combo][value index], in millionths: exact, no float.
        table = [
            [int(Decimal(v) * credits / per * MICRO) for v in VALUES] for _, credits, per in rates
        ]
        value_text = [f"{v}.000000" for v in VALUES]
        dims_text = [f'{{"model": "{m}", "token_type": "{t}"}}' for m, t in COMBOS]
        first_hour = (now - timedelta(days=days)).replace(minute=0, second=0)
        hours = int((now - first_hour).total_seconds() // 3600)  # whole hours before now
        hour_text = [
            (first_hour + timedelta(hours=h)).strftime("%Y-%m-%d %H:") for h in range(hours)
        ]
        # An event's id carries its month (metering.partitions), and each month gets its
        # partitions first: the history lands where ingest would have put it.
        hour_month = [month_index(first_hour + timedelta(hours=h)) for h in range(hours)]
        for month in sorted(set(hour_month)):
            month_partition_make(month)
        hour_bits = [month << SEQUENCE_BITS for month in hour_month]
        rated_at = now.strftime("%Y-%m-%d %H:%M:%S+00")
        rollups: dict[tuple[int, int, int], list[int]] = {}
        credits_by_customer: dict[int, int] = {}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('metering_meterevent', 'id'))",
            )
            first_id = int(cursor.fetchone()[0])
            if count:
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence('metering_meterevent', 'id'), %s)",
                    [first_id + count],
                )
        raw = connection.connection
        assert raw is not None
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            self._trust = bool(cursor.fetchone()[0])
        if not self._trust:
            self.stdout.write("  not a superuser: foreign keys are checked row by row (slower)")
        started = time.monotonic()
        meter_id = meter.pk
        written = 0
        while written < count:
            size = min(CHUNK, count - written)
            events: list[str] = []
            ratings: list[str] = []
            keys: list[str] = []
            # Customer by customer: index inserts stay local, several times faster.
            picks = sorted(rng.randrange(len(targets)) for _ in range(size))
            for i in range(size):
                number = first_id + written + i
                target = targets[picks[i]]
                combo = rng.randrange(4)
                vi = rng.randrange(5)
                hour = rng.randrange(hours)
                event_id = hour_bits[hour] | number
                at = f"{hour_text[hour]}{rng.randrange(60):02d}:{rng.randrange(60):02d}+00"
                micro = table[combo][vi]
                events.append(
                    f"{event_id}\t{target.customer_id}\tload-{number}\t{EVENT_NAME}\t"
                    f"{meter_id}\t{at}\t{value_text[vi]}\t{dims_text[combo]}\t\\N\t\\N\t"
                    f"{number:064x}\t{at}\n"
                )
                keys.append(f"{target.customer_id}\tload-{number}\t{event_id}\n")
                ratings.append(
                    f"{event_id}\trated\t{_micro_text(micro)}\t{value_text[vi]}\t"
                    f"{rates[combo][0]}\t{target.period_id}\tf\t\t\t{rated_at}\n"
                )
                key = (target.customer_id, hour, combo)
                slot = rollups.get(key)
                if slot is None:
                    rollups[key] = [VALUES[vi], 1, micro]
                else:
                    slot[0] += VALUES[vi]
                    slot[1] += 1
                    slot[2] += micro
                credits_by_customer[target.customer_id] = (
                    credits_by_customer.get(target.customer_id, 0) + micro
                )
            with transaction.atomic(), raw.cursor() as cur:
                if self._trust:
                    # Rows are consistent by construction: skip the per-row key checks
                    # (until the end of the load, see handle).
                    cur.execute("SET LOCAL session_replication_role = replica")
                with cur.copy(f"COPY metering_meterevent ({EVENT_COLUMNS}) FROM STDIN") as copy:
                    copy.write("".join(events))
                with cur.copy(f"COPY metering_eventrating ({RATING_COLUMNS}) FROM STDIN") as copy:
                    copy.write("".join(ratings))
                with cur.copy(
                    "COPY metering_eventkey (customer_id, identifier, event_id) FROM STDIN"
                ) as copy:
                    copy.write("".join(keys))
            written += size
            rate = written / (time.monotonic() - started)
            self.stdout.write(f"  events + ratings: {written:,}/{count:,} ({rate:,.0f} rows/s)")
        self._first_hour = first_hour
        self._meter_id = meter_id
        return rollups, credits_by_customer

    # --- rollups and period usage ------------------------------------------------------

    def _rollups(
        self, rollups: dict[tuple[int, int, int], list[int]], targets: list[Target], now: datetime
    ) -> None:
        if not rollups:
            return
        started = time.monotonic()
        first_hour: datetime = self._first_hour
        dims_text = [f'{{"model": "{m}", "token_type": "{t}"}}' for m, t in COMBOS]
        keys_text = [dimensions_key({"model": m, "token_type": t}) for m, t in COMBOS]
        raw = connection.connection
        assert raw is not None
        items = list(rollups.items())
        with transaction.atomic(), raw.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE load_rollup ON COMMIT DROP AS SELECT customer_id, meter_id, "
                "hour, dimensions, dimensions_key, value, events, credits "
                "FROM metering_usagerollup WITH NO DATA"
            )
            for start in range(0, len(items), CHUNK):
                lines = []
                for (customer_id, hour, combo), (value, events, micro) in items[
                    start : start + CHUNK
                ]:
                    at = (first_hour + timedelta(hours=hour)).astimezone(UTC)
                    lines.append(
                        f"{customer_id}\t{self._meter_id}\t{at:%Y-%m-%d %H}:00:00+00\t"
                        f"{dims_text[combo]}\t{keys_text[combo]}\t{value}\t{events}\t"
                        f"{_micro_text(micro)}\n"
                    )
                with cur.copy(
                    "COPY load_rollup (customer_id, meter_id, hour, dimensions, dimensions_key, "
                    "value, events, credits) FROM STDIN"
                ) as copy:
                    copy.write("".join(lines))
            cur.execute(
                "INSERT INTO metering_usagerollup (customer_id, meter_id, hour, dimensions, "
                "dimensions_key, value, events, credits) SELECT customer_id, meter_id, hour, "
                "dimensions, dimensions_key, value, events, credits FROM load_rollup "
                "ON CONFLICT (customer_id, meter_id, hour, dimensions_key, workspace) "
                "DO UPDATE SET "
                "value = metering_usagerollup.value + EXCLUDED.value, "
                "events = metering_usagerollup.events + EXCLUDED.events, "
                "credits = metering_usagerollup.credits + EXCLUDED.credits"
            )
            cur.execute("DROP TABLE load_rollup")
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"  rollups: {len(items):,} hourly rows in {elapsed:.1f} s "
            f"({len(items) / elapsed if elapsed else 0:,.0f} rows/s)"
        )

    def _usage(self, credits: dict[int, int], targets: list[Target], now: datetime) -> None:
        started = time.monotonic()
        accounts = {t.customer_id: t for t in targets}
        for customer_id, micro in sorted(credits.items()):
            target = accounts[customer_id]
            amount = Decimal(_micro_text(micro))
            with transaction.atomic():
                debit = ledger.credits_consume(
                    account=Account.objects.get(pk=target.account_id),
                    amount=amount,
                    cause=ledger.Cause(type="system", id=f"load:{now:%Y%m%dT%H%M%S}"),
                    actor="system:load",
                    meter=METER,
                    reason="load data: the rated events of this run, summarized",
                )
                usage, _ = PeriodUsage.objects.select_for_update().get_or_create(
                    period_id=target.period_id, defaults={"customer_id": customer_id}
                )
                usage.credits += amount
                usage.overage += debit.overage
                usage.save()
        # Event counts from the rollups, which hold every load event of the period.
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE metering_periodusage u SET events = r.events FROM ("
                " SELECT customer_id, sum(events) AS events FROM metering_usagerollup"
                " GROUP BY customer_id) r WHERE r.customer_id = u.customer_id"
                " AND u.period_id = ANY(%s)",
                [[t.period_id for t in targets]],
            )
        elapsed = time.monotonic() - started
        self.stdout.write(f"  ledger consume + period usage: {len(credits):,} in {elapsed:.1f} s")
