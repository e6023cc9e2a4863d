"""The benchmark database: its customers and past events, and the SQL helpers the
figures share."""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bench import env
from bench.metering.clients import MODELS

SCRATCH = "bench_meterevent_copy"
COLUMNS = (
    "customer_id, identifier, event_name, meter_id, timestamp, value, dimensions, "
    "workspace, authorization_id, content_hash, received_at"
)
KEY_COLUMNS = "customer_id, identifier, event_id"


def run_sql(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def raw_connection() -> Any:
    """The psycopg connection under Django's (autocommit: each statement commits)."""
    from django.db import connection

    connection.ensure_connection()
    return connection.connection


@dataclass
class Setup:
    key: str
    tenants: list[tuple[str, int]]  # external id, pk: the ingest customers (postpaid plan)
    meter_id: int


def create_data(args: argparse.Namespace) -> Setup:
    from plans import catalog
    from plans.apikeys import api_key_create
    from plans.models import Meter, Plan
    from plans.services import customer_create, subscription_start

    catalog.load((env.ROOT / "docs" / "examples" / "catalog.yaml").read_text())
    _, key = api_key_create(name="bench-metering")
    pro = Plan.objects.get(code="pro")
    tenants = []
    for i in range(args.customers):
        customer = customer_create(
            external_id=f"tenant-{i:03d}", name=f"Tenant {i}", email=f"billing@t{i}.test"
        )
        subscription_start(customer=customer, plan=pro, actor="bench:setup")
        tenants.append((customer.external_id, customer.pk))
    meter = Meter.objects.get(event_name="llm.tokens")
    return Setup(key=key, tenants=tenants, meter_id=meter.pk)


def hot_customer(name: str, paid: Decimal | None) -> tuple[str, int, Decimal]:
    """A customer on the hard-stop plan; returns its id, pk and available credits."""
    from ledger import services as ledger
    from ledger.selectors import account_balance
    from plans.models import Plan
    from plans.services import customer_create, subscription_start

    customer = customer_create(external_id=name, name=name, email=f"billing@{name}.test")
    subscription_start(customer=customer, plan=Plan.objects.get(code="starter"), actor="bench")
    if paid:
        ledger.credit_grant_create(
            account=customer.account, amount=paid, category="paid", actor="bench:setup"
        )
    return name, customer.pk, account_balance(account=customer.account).available


def max_event_id() -> int:
    return int(run_sql("SELECT COALESCE(MAX(id), 0) FROM metering_meterevent")[0][0])


def queued() -> int:
    return int(run_sql("SELECT count(*) FROM metering_ratingqueue")[0][0])


def _preload_chunks(
    rows: int, customer_ids: list[int], meter_id: int, first: int
) -> Iterator[tuple[str, str]]:
    """Past events and their keys in COPY text format: random identifiers, 30 days of
    timestamps, ids numbered from ``first`` in each event's month (metering.partitions)."""
    from metering.partitions import SEQUENCE_BITS, month_index

    rng = random.Random(rows)
    now = int(time.time())
    moments = [now - 86400 * 30 + 600 * i for i in range(4300)]
    stamps = [time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(m)) for m in moments]
    months = [month_index(datetime.fromtimestamp(m, UTC)) << SEQUENCE_BITS for m in moments]
    dims = [json.dumps({"model": m, "token_type": t}) for m, t in MODELS]
    number = first
    for start in range(0, rows, 20_000):
        lines, keys = [], []
        for _ in range(min(20_000, rows - start)):
            pick = rng.randrange(len(stamps))
            stamp, event_id = stamps[pick], months[pick] | number
            customer_id, identifier = rng.choice(customer_ids), f"{rng.getrandbits(128):032x}"
            number += 1
            lines.append(
                f"{event_id}\t{customer_id}\t{identifier}\tllm.tokens\t"
                f"{meter_id}\t{stamp}\t{rng.randint(1, 4000)}\t{rng.choice(dims)}\t\\N\t\\N\t"
                f"{rng.getrandbits(256):064x}\t{stamp}\n"
            )
            keys.append(f"{customer_id}\t{identifier}\t{event_id}\n")
        yield "".join(lines), "".join(keys)


def preload(rows: int, setup: Setup) -> float:
    """COPY ``rows`` past events (and their keys) into the events table; return rows/s."""
    from metering.partitions import SEQUENCE, partitions_ensure

    partitions_ensure()
    # A block of the sequence, as ingest would draw one number an event.
    first = int(run_sql(f"SELECT nextval('{SEQUENCE}')")[0][0])
    run_sql(f"SELECT setval('{SEQUENCE}', %s)", [first + rows])
    started = time.perf_counter()
    cursor = raw_connection().cursor()
    customers = [pk for _, pk in setup.tenants]
    for events, keys in _preload_chunks(rows, customers, setup.meter_id, first):
        with cursor.copy(f"COPY metering_meterevent (id, {COLUMNS}) FROM STDIN") as copy:
            copy.write(events)
        with cursor.copy(f"COPY metering_eventkey ({KEY_COLUMNS}) FROM STDIN") as copy:
            copy.write(keys)
    cursor.close()
    return rows / (time.perf_counter() - started)


def discard_since(watermark: int) -> None:
    """Delete a run's events (and their queue rows), so every run sees the same table."""
    run_sql("DELETE FROM metering_ratingqueue WHERE event_id > %s", [watermark])
    run_sql("DELETE FROM metering_meterevent WHERE id > %s", [watermark])
    run_sql("DELETE FROM metering_eventkey WHERE event_id > %s", [watermark])
    run_sql(f"DELETE FROM {SCRATCH} WHERE id > %s", [watermark])
    run_sql("DELETE FROM metering_rejectedevent")
    run_sql(
        f"VACUUM (ANALYZE) metering_meterevent, metering_eventkey, metering_ratingqueue, {SCRATCH}"
    )


def postgres_pids() -> set[int]:
    """The benchmark database's sessions and the server's WAL writer and checkpointer."""
    rows = run_sql(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
    )
    return {int(r[0]) for r in rows}
