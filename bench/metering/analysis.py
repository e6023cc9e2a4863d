"""The docs' "Why, and what would fix it": each figure explained from this run's own
measurements (CPU per unit, the database-alone paths, the profiles)."""

from __future__ import annotations

import argparse
import os

from bench.metering.auth import AUTH_RATIO_TARGET, HOLD_PHASE, cpu_units
from bench.metering.db_paths import AS_IT_RUNS_PATH, COPY_PATH, NO_FK_PATH, NO_QUEUE_PATH, DbPath
from bench.metering.ingest import INGEST_TARGET, Level
from bench.metering.lag import LAG_TARGET, paced_units
from bench.metering.output import ceiling, count, cpu_ms, group_ms, secs, server_ms
from bench.metering.profiling import RequestProfile
from bench.metering.rating import Drain
from bench.metering.results import Results
from bench.stats import median, ms


def analysis_text(res: Results, args: argparse.Namespace) -> list[str]:
    """Why each figure lands where it does, from this run's own measurements."""
    lines = ["### Why, and what would fix it", "", "From this run's figures above."]
    if res.levels:
        lines += ["", *_ingest_analysis(res, args)]
    if res.lags:
        lines += ["", *_lag_analysis(res, args)]
    if res.rounds:
        lines += ["", *_auth_analysis(res, args)]
    return lines


# --- ingest ------------------------------------------------------------------------------


def _path(res: Results, label: str) -> DbPath | None:
    return next((p for p in res.paths if p.label == label), None)


def _ingest_server_ms(res: Results) -> float:
    """The server's CPU per 1000 events accepted at the first table size."""
    return server_ms(*res.levels[0].cpu_units())


def _missed(res: Results) -> list[Level]:
    return [level for level in res.levels if level.med("rate") < INGEST_TARGET]


def _ingest_summary(res: Results) -> str:
    base = res.levels[0]
    cpus, units = base.cpu_units()
    web, pg = group_ms(cpus, units, "web"), group_ms(cpus, units, "postgres")
    server = server_ms(cpus, units)
    cap = ceiling(server, 1000)
    others = median([c.others / c.busy * 100 if c.busy else 0.0 for c in cpus])
    budget = (os.cpu_count() or 1) * 1000 / (INGEST_TARGET / 1000)
    status = ", ".join(
        f"{'met' if level.med('rate') >= INGEST_TARGET else 'missed'} at "
        f"{count(level.rows)} rows ({level.med('rate') / INGEST_TARGET:.2f}x)"
        for level in res.levels
    )
    return (
        f"**Ingest: {status}.** Per 1000 events accepted with {count(base.rows)} rows in the "
        "table the server "
        f"spent {web:.0f} ms of CPU in gunicorn and {pg:.0f} ms in PostgreSQL ({server:.0f} "
        f"ms). {os.cpu_count()} CPUs give {budget * INGEST_TARGET / 1000:,.0f} ms of CPU per "
        f"second, so with the machine to itself the server could accept at most about "
        f"{cap:,.0f} events/s ({cap / INGEST_TARGET:.2f}x of the target), before the load "
        f"generator and, here, other tenants ({others:.0f}% of the busy CPU time in these "
        f"runs) take their share. The target needs the server's cost below {budget:.0f} ms "
        "per 1000 events with nothing else running, and well below it to leave headroom."
        + (
            f" The margin is thin: the ceiling is {cap / INGEST_TARGET:.2f}x of the target, so "
            "other load on the machine (other tenants, or rating the same events) takes the "
            "rate below 25,000/s."
            if not _missed(res) and cap < 1.5 * INGEST_TARGET
            else ""
        )
    )


def _database_bullet(res: Results) -> list[str]:
    copy, noq = _path(res, COPY_PATH), _path(res, NO_QUEUE_PATH)
    nofk, prod = _path(res, NO_FK_PATH), _path(res, AS_IT_RUNS_PATH)
    if not (copy and nofk and prod):
        return []
    fk = prod.postgres_ms() - nofk.postgres_ms()
    queue_cost = f"{nofk.postgres_ms() - noq.postgres_ms():.1f}" if noq else "n/a"
    return [
        "",
        f"- Database: raw `COPY` costs {copy.postgres_ms():.1f} ms of PostgreSQL CPU per "
        f"1000 rows, the ingest statement without foreign keys "
        f"{nofk.postgres_ms():.1f} ms (its rating-queue rows {queue_cost} ms of that), and "
        f"as it runs {prod.postgres_ms():.1f} ms. The difference, "
        f"{fk / max(prod.postgres_ms(), 1e-9) * 100:.0f}% of the statement's database CPU, "
        "is the one foreign key left on the insert, the event's `authorization` (a per-row "
        "trigger that returns at once for an event naming none, as here), and the real "
        "tables' own state. The event's `customer` and `meter` and the queue row's `event` "
        "are not foreign keys: ingest locks each customer and meter of a batch once, in a "
        "statement of its own (not measured here), and reconcile checks look for orphans. "
        f"From one connection the statement writes {prod.rate:,.0f} rows/s as it runs and "
        f"{nofk.rate:,.0f} on the copies (`COPY`: {copy.rate:,.0f}).",
    ]


def _web_bullet(profile: RequestProfile) -> str:
    validate = profile.phase("validate each event").seconds
    digest = profile.phase("content hash (SHA-256) per event").seconds
    insert = profile.phase("INSERT ... ON CONFLICT + queue rows (psycopg)").seconds
    commit = profile.phase("COMMIT").seconds
    return (
        f"- Web worker (the profile, one 1000-event request): validating each event in "
        f"Python {ms(validate + digest)} (the SHA-256 content hash {ms(digest)} of it), the "
        f"INSERT call {ms(insert)} (the lock of the batch's customers and meters, building "
        "eleven Python lists, encoding them and waiting for the server), COMMIT "
        f"{ms(commit)} (waiting for the WAL flush, the worker "
        f"idle), out of {ms(profile.total)}."
    )


def _growth_bullet(levels: list[Level]) -> str:
    base, last = levels[0], levels[-1]
    growth = last.med("rate") / base.med("rate")
    copy_growth = last.med("copy_rate") / base.med("copy_rate")
    ratios = ", ".join(f"{level.med('of_copy'):.3f}" for level in levels)
    return (
        f"- Cost growth: with {last.rows:,} rows in the table the rate is {growth:.2f}x "
        f"the {base.rows:,}-row rate, and `COPY` into a scratch table of the same size, "
        f"in the same runs, {copy_growth:.2f}x; ingest / `COPY` is {ratios} at "
        + ", ".join(count(level.rows) for level in levels)
        + " rows. "
        + (
            "Ingest slows no more than a raw `COPY` does: what changes between the sizes "
            "is the table (deeper indexes, less of them cached) and this shared "
            "machine's load, not the ingest path."
            if growth >= 0.85 * copy_growth
            else "Ingest slows more than a raw `COPY` into a table of the same size: the "
            "extra per-row work grows with the table (the `ON CONFLICT` probe of the "
            "unique (customer, identifier) index, which random identifiers hit all over)."
        )
    )


def _ingest_fixes(res: Results, args: argparse.Namespace) -> list[str]:
    missed = _missed(res)
    thin = ceiling(_ingest_server_ms(res), 1000) < 1.5 * INGEST_TARGET
    if not (missed or thin):
        return []
    fix = [
        "1. Validate in C: decode the body with a typed `msgspec.Struct` per "
        "event (required fields, types, the decimal value and the timestamp parsed by "
        "msgspec) and keep Python only for the checks against the batch's customers, "
        "meters and dimensions.",
        "2. Once the CPU cost is down, let waits overlap: more gunicorn "
        f"workers than CPUs (`WEB_CONCURRENCY` 4-5 on {os.cpu_count()} CPUs, gunicorn's "
        "2 x CPUs + 1), so a worker waiting for its INSERT or its COMMIT's WAL flush does "
        f"not leave a CPU idle; with {args.web_workers} workers on "
        f"{os.cpu_count()} CPUs it does whenever nothing else is runnable. This helps "
        "only on a machine with CPU to spare, which this shared one rarely has.",
    ]
    heading = "What would fix it:" if missed else "What would give it headroom:"
    return ["", heading, "", *fix]


def _ingest_analysis(res: Results, args: argparse.Namespace) -> list[str]:
    lines = [_ingest_summary(res), *_database_bullet(res)]
    if res.ingest_profile:
        lines.append(_web_bullet(res.ingest_profile))
    if len(res.levels) > 1:
        lines.append(_growth_bullet(res.levels))
    return lines + _ingest_fixes(res, args)


# --- accepted -> reflected ---------------------------------------------------------------


def _lag_summary(res: Results, args: argparse.Namespace) -> str:
    p99 = res.lag_p99
    cpus, units = paced_units(res.lags)
    server = server_ms(cpus, units)
    need = args.lag_rate * server / 1_000_000
    backlog = max(r.backlog for r in res.lags)
    achieved = median([r.achieved for r in res.lags])
    short = (
        f" The clients achieved only {achieved:,.0f} of the {args.lag_rate:,.0f} events/s "
        "asked for: the server could not take requests as fast as the schedule sent them."
        if achieved < 0.95 * args.lag_rate
        else ""
    )
    return (
        f"**Accepted -> reflected: {'met' if p99 < LAG_TARGET else 'missed'}.** The lag is the "
        f"wait for rating. In the paced runs the events waiting for rating grew to "
        f"{backlog:,} and the "
        f"lag with them (p50 {secs(median([r.p(50) for r in res.lags]))}, p99 "
        f"{secs(p99)}). Ingest at {args.lag_batch} per request plus rating cost the server "
        f"{server:.0f} ms of CPU per 1000 events (web "
        f"{group_ms(cpus, units, 'web'):.0f}, worker {group_ms(cpus, units, 'worker'):.0f}, "
        f"PostgreSQL {group_ms(cpus, units, 'postgres'):.0f}), so {args.lag_rate:,.0f} events/s "
        f"need {need:.2f} of the machine's {os.cpu_count()} CPUs before anyone else runs. "
        "Rating needs headroom to keep the lag short: with capacity at twice the arrival rate "
        "an event waits about one batch; below the arrival rate the queue, and the lag, grow "
        "for as long as the load lasts." + short
    )


def _drain_bullet(d: Drain, args: argparse.Namespace) -> list[str]:
    return [
        "",
        f"- Rating alone drained a backlog at {d.rate:,.0f} events/s "
        f"({d.rate / args.lag_rate:.2f}x of the arrival rate), costing "
        f"{cpu_ms(d.cpu, d.events / 1000, 'worker'):.0f} ms of worker CPU and "
        f"{cpu_ms(d.cpu, d.events / 1000, 'postgres'):.0f} ms of PostgreSQL CPU per 1000 "
        "events: rating, not ingest, is the expensive half.",
    ]


def _rating_profile_bullet(profile: RequestProfile) -> str:
    top = sorted((p for p in profile.phases if p.name != "COMMIT"), key=lambda p: -p.seconds)[:4]
    python = profile.total - profile.sql - profile.phase("COMMIT").seconds
    return (
        f"- Where rating's time goes (profile, per 1000 events, {ms(profile.total)}): "
        + "; ".join(f"{p.name} {ms(p.seconds)} (SQL {ms(p.sql)})" for p in top)
        + f"; COMMIT {ms(profile.phase('COMMIT').seconds)}. "
        f"{python / profile.total * 100 if profile.total else 0:.0f}% of it is Python. "
        "Rating reads its events as tuples in the statement that dequeues them and "
        "writes ratings, rollups and the ledger's entries as arrays (`unnest`); what "
        "is left per event is Python: pricing, the draw-down over the account's "
        "grants and one or two `LedgerEntry` objects."
    )


def _lag_fixes(res: Results, args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        "What would fix it:",
        "",
        "1. Write the ledger entries set-based, as rating now writes its ratings and "
        "rollups: the array `INSERT ... SELECT FROM unnest(...)` instead of a "
        "`LedgerEntry` instance per entry and `bulk_create`.",
        "2. Book the ledger per batch where the invariants allow it: one consume entry per "
        "grant and one overage entry per batch, each event's `EventRating` keeping its "
        "credits and the batch operation (the `event_credits_equal_its_entries` check "
        "would then compare per operation).",
        "3. Keep the worker's connection: ingest sends a rating task only when none is "
        "waiting (a flag in the shared cache), but Celery's Django fixup still closes the "
        "worker's database connection after every task unless `CELERY_DB_REUSE_MAX` is "
        "set, so each task opens a new one.",
    ]
    if res.levels:
        web_1000 = group_ms(*res.levels[0].cpu_units(), "web")
        web_100 = group_ms(*paced_units(res.lags), "web")
        lines.append(
            f"4. Clients that can should send bigger batches: at {args.lag_batch} events "
            f"per request the web spent {web_100:.0f} ms of CPU per 1000 events, at "
            f"{args.batch} per request (figure 1) {web_1000:.0f} ms."
        )
    return lines


def _lag_analysis(res: Results, args: argparse.Namespace) -> list[str]:
    lines = [_lag_summary(res, args)]
    if res.drain:
        lines += _drain_bullet(res.drain, args)
    if res.drain and res.drain.profile:
        lines.append(_rating_profile_bullet(res.drain.profile))
    if not res.lag_p99 < LAG_TARGET:
        lines += _lag_fixes(res, args)
    return lines


# --- authorizations ----------------------------------------------------------------------


def _auth_summary(res: Results, args: argparse.Namespace, met: bool) -> str:
    auth_ms, get_ms = server_ms(*cpu_units(res, "auth")), server_ms(*cpu_units(res, "get"))
    return (
        f"**Authorizations: {'met' if met else 'missed'}, overdraw {res.overdraw}.** An "
        f"authorization cost {auth_ms:.1f} ms of server CPU against {get_ms:.1f} ms for the "
        f"trivial GET ({auth_ms / get_ms if get_ms else 0:.1f}x): as each rate is at most the "
        "CPUs divided by its cost, the ratio would be about "
        f"{get_ms / auth_ms if auth_ms else 0:.2f} even with the machine to themselves; "
        f"measured {res.auth_ratio:.2f}. (The GET itself tops out near "
        f"{ceiling(get_ms, 1):,.0f}/s here even alone: API-key authentication, a customer "
        "read and a new connection per request.) The hot account's row lock is not what "
        "limits it "
        f"over HTTP: the {args.web_threads} threads of a worker that authorize for one "
        "customer at once share the ledger's transactions (`ledger.combiner`), so at most "
        f"{args.web_workers} transactions, one per worker, wait for it."
    )


def _auth_profile_bullet(auth: RequestProfile, get: RequestProfile) -> list[str]:
    return [
        "",
        f"- The profile: {auth.statements:.0f} statements per authorization through "
        f"Django's cursors against {get.statements:.0f} for the GET: the API key, then "
        "one query for the customer, an earlier answer for the identifier and the plan "
        "in force; the rate table comes from a 5-second cache; the hold is the ledger's "
        "batch (its own four round trips: the account lock with BEGIN, one pipelined "
        "read, one pipelined write that also stores the authorization, and the COMMIT, "
        f"{ms(auth.phase(HOLD_PHASE).seconds)}); "
        f"{ms(auth.total)} per authorization against "
        f"{ms(get.total)} per GET in one process.",
    ]


_AUTH_FIXES = [
    "",
    "What would fix it:",
    "",
    "1. Decide once: pass the locked account and the available credits `_decide` "
    "computed into `hold_create` (or let `hold_create` decide and return the denial), "
    "dropping the second account lock, the second grant sum and the savepoint pair.",
    "2. Cache what rarely changes, per process for a few seconds or until a change "
    "signal: the rate table (three statements), the customer's active subscription "
    "and current period (two), the API key row (one).",
    "3. One round trip under the lock: write the hold, its operation, its entry, the "
    "account's `held` and the authorization in one statement (a CTE) or one PL/pgSQL "
    "function, as the ledger notes propose for hold + capture.",
    "",
    "Together these take an authorization from about 22 round trips to about 5 "
    "(customer, lock + decide + write, commit), which is what it takes to come within "
    "2x of a GET that needs two plus the connection handling both pay.",
]


def _auth_analysis(res: Results, args: argparse.Namespace) -> list[str]:
    met = res.auth_ratio >= AUTH_RATIO_TARGET and res.overdraw == 0
    lines = [_auth_summary(res, args, met)]
    if len(res.auth_profiles) == 2:
        lines += _auth_profile_bullet(*res.auth_profiles)
    return lines if met else lines + _AUTH_FIXES
