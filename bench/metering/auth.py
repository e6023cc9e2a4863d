"""Figure 3, ``POST /api/v1/authorizations`` on one hot customer next to a trivial GET.

The hot customer is on the hard-stop plan; 32 concurrent clients authorize, and in the
same rounds the same clients send a trivial ``GET /api/v1/customers/{id}`` to the same
gunicorn. Target: at least half the GET rate, zero overdraw. A race for the last credits
of a customer checks that the hard stop holds.

Then the same authorizations against gunicorn laid out differently (the configured
2 workers x 8 threads, 8 x 4, 32 x 1; restarted for each): the ledger combines the hold
calls of one account within a process, so the layout decides how many calls share a
ledger transaction, which PostgreSQL counts (``xmin`` of the run's ledger operations).
"""

from __future__ import annotations

import argparse
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bench.ledger import _operations_since as operations_since
from bench.metering.clients import AUTH_VALUE, AUTHORIZATION, Job, LoadResult
from bench.metering.context import Context, check_load, measured_load
from bench.metering.cpu import CpuUse
from bench.metering.data import Setup, hot_customer, run_sql
from bench.metering.output import (
    CPU_HEADER,
    cpu_parts,
    cpu_row,
    credits,
    group_ms,
    met,
    server_ms,
)
from bench.metering.profiling import (
    PhaseProbe,
    RequestProfile,
    common_phases,
    django_client,
    profile_line,
    profile_requests,
    profile_table,
)
from bench.stats import median, ms, percentile, rate, spread

if TYPE_CHECKING:
    from bench.metering.results import Results

HOLD_PHASE = "hold_create (the ledger's batch)"  # a profile phase of the authorization
GET_REFERENCE = 1_600.0  # requests/s, gunicorn + DRF trivial GET, 2 workers
AUTH_RATIO_TARGET = 0.5  # authorizations/s over trivial GETs/s
EXHAUST_VALUE = 8000  # 4 credits: the starter plan's 2,000 included credits allow 500
EXHAUST_PER_CLIENT = 25
LAYOUT_WARM_REQUESTS = 8  # per client, unmeasured, after gunicorn is restarted


@dataclass
class HttpRun:
    rate: float
    p50: float
    p99: float
    cpu: CpuUse
    load: float

    @property
    def requests(self) -> float:
        """Requests answered in the measured window."""
        return self.rate * self.cpu.wall


@dataclass
class AuthRound:
    get: HttpRun
    auth: HttpRun
    allowed: int
    denied: int
    overdraw: Decimal

    @property
    def ratio(self) -> float:
        return self.auth.rate / self.get.rate if self.get.rate else 0.0


@dataclass
class Exhaustion:
    available: Decimal
    per: Decimal
    requests: int
    allowed: int
    allowed_credits: Decimal
    overdraw: Decimal

    @property
    def expected(self) -> int:
        return min(self.requests, int(self.available // self.per))


@dataclass
class LayoutRun:
    """One round of authorizations against one gunicorn layout."""

    http: HttpRun
    allowed: int
    overdraw: Decimal
    calls: int  # ledger operations the run wrote (one per allowed hold)
    transactions: int  # distinct transactions that wrote them

    @property
    def per_transaction(self) -> float:
        return self.calls / self.transactions if self.transactions else 0.0


@dataclass
class Layout:
    """Authorizations on a hot customer with gunicorn as ``workers`` x ``threads``."""

    workers: int
    threads: int
    runs: list[LayoutRun]
    exhaustion: Exhaustion

    @property
    def name(self) -> str:
        return f"{self.workers} x {self.threads}"

    @property
    def rates(self) -> list[float]:
        return [r.http.rate for r in self.runs]

    @property
    def rate(self) -> float:
        return median(self.rates)

    def med(self, name: str) -> float:
        return median([float(getattr(r.http, name)) for r in self.runs])

    @property
    def per_transaction(self) -> float:
        return median([r.per_transaction for r in self.runs])

    @property
    def allowed(self) -> int:
        return sum(r.allowed for r in self.runs)

    @property
    def overdraw(self) -> Decimal:
        return sum((r.overdraw for r in self.runs), self.exhaustion.overdraw)

    @property
    def server_ms(self) -> float:
        """Server CPU (web, worker, postgres) per authorization, median of the runs."""
        cpus = [r.http.cpu for r in self.runs]
        return server_ms(cpus, [r.http.requests for r in self.runs])

    def group_ms(self, group: str) -> float:
        """One group's CPU per authorization, median of the runs."""
        cpus = [r.http.cpu for r in self.runs]
        return group_ms(cpus, [r.http.requests for r in self.runs], group)


# --- measuring -------------------------------------------------------------------------


def _http_jobs(
    ctx: Context, kind: str, customer: str, start_at: float, duration: float, **extra: Any
) -> list[Job]:
    """``--auth-clients`` clients as threads, spread evenly over the pool's processes."""
    clients = ctx.args.auth_clients
    processes = min(ctx.pool.size, clients)
    threads = [
        clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
    ]
    tag = secrets.token_hex(4)
    values: dict[str, Any] = {
        "port": ctx.port,
        "key": ctx.setup.key,
        "start_at": start_at,
        "warmup": ctx.args.warmup,
        "duration": duration,
        "max_requests": int((ctx.args.warmup + duration) * 5000),
        "customers": (customer,),
        "tag": tag,
    }
    values.update(extra)
    return [Job(kind=kind, threads=n, **values) for n in threads]


def http_run(
    ctx: Context, kind: str, customer: str, duration: float | None = None
) -> tuple[HttpRun, LoadResult]:
    duration = duration or ctx.args.auth_duration

    def jobs_at(start_at: float) -> list[Job]:
        return _http_jobs(ctx, kind, customer, start_at, duration)

    result, cpu, load = measured_load(ctx, jobs_at, duration, kind)
    run = HttpRun(
        rate=result.requests / duration,
        p50=percentile(result.latencies, 50),
        p99=percentile(result.latencies, 99),
        cpu=cpu,
        load=load,
    )
    return run, result


def _stored(pk: int) -> dict[str, tuple[int, Decimal]]:
    """The customer's stored authorizations: count and credits per decision."""
    from django.db.models import Count, Sum

    from metering.models import Authorization

    return {
        row["decision"]: (int(row["n"]), Decimal(row["credits"] or 0))
        for row in Authorization.objects.filter(customer_id=pk)
        .values("decision")
        .annotate(n=Count("id"), credits=Sum("credits"))
    }


def _held(pk: int) -> tuple[Decimal, Decimal, Decimal]:
    """The account's ``held``, the total of its open holds, and its available credits."""
    from django.db.models import Sum

    from ledger.models import Account, Hold, HoldStatus
    from ledger.selectors import account_balance
    from plans.models import Customer

    customer = Customer.objects.select_related("account").get(pk=pk)
    held = Account.objects.get(pk=customer.account_id).held
    open_holds = Hold.objects.filter(
        account_id=customer.account_id, status=HoldStatus.OPEN
    ).aggregate(total=Sum("credits"))["total"] or Decimal(0)
    return held, open_holds, account_balance(account=customer.account).available


def check_authorizations(
    ctx: Context, pk: int, available: Decimal, result: LoadResult, what: str
) -> tuple[int, Decimal, Decimal]:
    """Allowed holds never exceed what was available, and the ledger agrees with what
    the clients were told. Returns allowed, their credits and the overdraw."""
    rows = _stored(pk)
    allowed, allowed_credits = rows.get("allow", (0, Decimal(0)))
    denied = rows.get("deny", (0, Decimal(0)))[0]
    overdraw = max(Decimal(0), allowed_credits - available)
    held, open_holds, after = _held(pk)
    checks = {
        "allowed credits above what was available": overdraw > 0,
        f"clients were allowed {result.allowed} times, stored {allowed}": allowed != result.allowed,
        f"clients were denied {result.denied} times, stored {denied}": denied != result.denied,
        f"account held {held} but open holds total {open_holds} and allowed {allowed_credits}": (
            not held == open_holds == allowed_credits
        ),
        f"available went negative: {after}": after < 0,
    }
    ctx.problems += [f"{what}: {text}" for text, failed in checks.items() if failed]
    return allowed, allowed_credits, overdraw


def _round(ctx: Context, run: int) -> AuthRound:
    """GET and authorizations on a fresh hot customer, the order alternating by round."""
    name, pk, available = hot_customer(f"hot-{run}", Decimal(1_000_000))
    order = ("get", "auth") if run % 2 == 0 else ("auth", "get")
    runs: dict[str, tuple[HttpRun, LoadResult]] = {}
    for kind in order:
        runs[kind] = http_run(ctx, kind, name)
    allowed, _, overdraw = check_authorizations(
        ctx, pk, available, runs["auth"][1], f"authorizations, round {run + 1}"
    )
    return AuthRound(runs["get"][0], runs["auth"][0], allowed, runs["auth"][1].denied, overdraw)


def measure_auth(ctx: Context) -> list[AuthRound]:
    rounds = []
    for run in range(ctx.args.runs):
        rounds.append(_round(ctx, run))
        if ctx.args.verbose:
            r = rounds[-1]
            print(
                f"  round {run + 1}: authorizations {rate(r.auth.rate)} (p99 {ms(r.auth.p99)}), "
                f"GET {rate(r.get.rate)} (p99 {ms(r.get.p99)}), ratio {r.ratio:.2f}, "
                f"load {r.auth.load:.1f}",
                flush=True,
            )
    return rounds


def measure_exhaustion(ctx: Context, name: str = "hot-exhaust") -> Exhaustion:
    """32 clients race for the last credits of a hard-stop customer: 800 requests of 4
    credits against 2,000 available."""
    name, pk, available = hot_customer(name, None)
    start_at = time.time() + 0.5
    jobs = _http_jobs(
        ctx,
        "auth",
        name,
        start_at,
        120.0,
        warmup=0.0,
        max_requests=EXHAUST_PER_CLIENT,
        value=EXHAUST_VALUE,
    )
    result = ctx.pool.run(jobs)
    check_load(result, name, ctx)
    allowed, allowed_credits, overdraw = check_authorizations(ctx, pk, available, result, name)
    per = Decimal(EXHAUST_VALUE) / 1000 * Decimal("0.5")
    exhaustion = Exhaustion(available, per, result.sent, allowed, allowed_credits, overdraw)
    if exhaustion.allowed != exhaustion.expected:
        ctx.problems.append(
            f"{name}: {allowed} allowed where {exhaustion.expected} fit in {available}"
        )
    return exhaustion


def layouts_wanted(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The configured layout (the Procfile's) first, then ``--layouts``, each once."""
    wanted = [(args.web_workers, args.web_threads), *args.layouts]
    return list(dict.fromkeys(wanted))


def _account_id(pk: int) -> int:
    return int(run_sql("SELECT account_id FROM plans_customer WHERE id = %s", [pk])[0][0])


def _last_operation() -> int:
    return int(run_sql("SELECT COALESCE(MAX(id), 0) FROM ledger_ledgeroperation")[0][0])


def _warm_layout(ctx: Context, label: str) -> None:
    """A few unmeasured authorizations per client, so every freshly started worker has
    its connection and its imports before the measured runs."""
    name, _, _ = hot_customer(f"hot-warm-{label}", Decimal(1_000_000))
    jobs = _http_jobs(
        ctx, "auth", name, time.time() + 0.5, 60.0, warmup=0.0, max_requests=LAYOUT_WARM_REQUESTS
    )
    check_load(ctx.pool.run(jobs), f"layout {label}, warm-up", ctx)


def _layout_run(ctx: Context, label: str, run: int) -> LayoutRun:
    name, pk, available = hot_customer(f"hot-{label}-{run}", Decimal(1_000_000))
    account_id = _account_id(pk)
    before = _last_operation()
    http, result = http_run(ctx, "auth", name, ctx.args.layout_duration)
    allowed, _, overdraw = check_authorizations(
        ctx, pk, available, result, f"layout {label}, round {run + 1}"
    )
    calls, transactions = operations_since(account_id, before)
    return LayoutRun(http, allowed, overdraw, int(calls), int(transactions))


def measure_layout(ctx: Context, workers: int, threads: int) -> Layout:
    """gunicorn restarted as ``workers`` x ``threads``, warmed, then ``--layout-runs``
    rounds of authorizations on a fresh hot customer each and the hard-stop race."""
    label = f"{workers}x{threads}"
    started = time.monotonic()
    ctx.services.restart_web(workers, threads)
    _warm_layout(ctx, label)
    if ctx.args.verbose:
        print(
            f"  gunicorn as {_workers_threads(workers, threads)}: started and warmed in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
    runs = []
    for run in range(ctx.args.layout_runs):
        runs.append(_layout_run(ctx, label, run))
        if ctx.args.verbose:
            r = runs[-1]
            print(
                f"  layout {workers} x {threads}, round {run + 1}: {rate(r.http.rate)} "
                f"(p99 {ms(r.http.p99)}), {r.per_transaction:.1f} calls per transaction, "
                f"load {r.http.load:.1f}",
                flush=True,
            )
    exhaustion = measure_exhaustion(ctx, f"hot-exhaust-{label}")
    return Layout(workers, threads, runs, exhaustion)


def measure_layouts(ctx: Context) -> list[Layout]:
    """Every layout in turn; gunicorn is left as configured."""
    layouts = [measure_layout(ctx, w, t) for w, t in layouts_wanted(ctx.args)]
    ctx.services.restart_web(ctx.args.web_workers, ctx.args.web_threads)
    return layouts


def _patch_authorization(probe: PhaseProbe) -> None:
    from billing_portal.api import authorizations
    from ledger import services as ledger
    from metering import services

    common_phases(probe)
    probe.patch(authorizations.AuthorizationsApi.InputSerializer, "is_valid", "validate the body")
    probe.patch(services, "authorization_create_for", "authorization_create (own work)")
    probe.patch(services, "_context", "read customer, earlier answer and plan (one query)")
    probe.patch(services, "_price", "price the estimate (rate card)")
    probe.patch(ledger, "hold_create", HOLD_PHASE)
    probe.patch(services, "_store", "store the authorization")


def profile_auth(setup: Setup, customer: str, requests: int) -> list[RequestProfile]:
    from billing_portal.api import customers

    client = django_client(setup.key)
    tag = secrets.token_hex(4)

    def authorize(i: int) -> None:
        body = AUTHORIZATION % (customer, f"profile-{tag}-{i}", AUTH_VALUE)
        response = client.post("/api/v1/authorizations", data=body, content_type="application/json")
        assert response.status_code == 200, response.content[:300]

    def get(i: int) -> None:
        response = client.get(f"/api/v1/customers/{customer}")
        assert response.status_code == 200, response.content[:300]

    authorize(-1)  # warm: imports and caches, not measured
    get(-1)
    probe = PhaseProbe()
    _patch_authorization(probe)
    auth = profile_requests("POST /api/v1/authorizations", probe, authorize, requests)
    probe = PhaseProbe()
    common_phases(probe)
    probe.patch(customers, "customer_or_404", "look up the customer")
    return [auth, profile_requests("GET /api/v1/customers/{id}", probe, get, requests)]


def run_figure(ctx: Context, res: Results) -> None:
    """Measure figure 3 and the hard stop, and print their lines."""
    res.rounds = measure_auth(ctx)
    res.loads += [r.auth.load for r in res.rounds]
    res.exhaustion = measure_exhaustion(ctx)
    print(auth_line(res), flush=True)
    for line in auth_cpu_lines(res):
        print(line, flush=True)
    print(exhaustion_line(res.exhaustion), flush=True)
    if ctx.args.layouts:
        res.layouts = measure_layouts(ctx)
        for layout in res.layouts:
            print(layout_line(layout, res.layouts[0]), flush=True)
        if ctx.args.verbose:
            print("\n".join(_layouts_table(res.layouts, ctx.args)), flush=True)
    if ctx.args.profile:
        name, _, _ = hot_customer("hot-profile", Decimal(1_000_000))
        res.auth_profiles = profile_auth(ctx.setup, name, ctx.args.profile_requests * 10)
        for profile in res.auth_profiles:
            print(profile_line(profile), flush=True)


# --- output ------------------------------------------------------------------------------


def auth_line(res: Results) -> str:
    auth = [r.auth.rate for r in res.rounds]
    get = [r.get.rate for r in res.rounds]
    return (
        f"metering authorizations, one hot customer, {len(res.rounds)} rounds: "
        f"{rate(median(auth))} ({spread(auth)}), p50 "
        f"{ms(median([r.auth.p50 for r in res.rounds]))}, p99 "
        f"{ms(median([r.auth.p99 for r in res.rounds]))}; trivial GET {rate(median(get))} "
        f"({spread(get)}), p99 {ms(median([r.get.p99 for r in res.rounds]))}, "
        f"{median(get) / GET_REFERENCE:.2f}x of the 1,600/s reference; authorizations = "
        f"{res.auth_ratio:.2f}x of GET (target >= {AUTH_RATIO_TARGET}, "
        f"{res.auth_ratio / AUTH_RATIO_TARGET:.2f}x of it); overdraw {res.overdraw}"
    )


def cpu_units(res: Results, attr: str) -> tuple[list[CpuUse], list[float]]:
    """Each round's CPU and requests of one kind (``auth`` or ``get``)."""
    runs: list[HttpRun] = [getattr(r, attr) for r in res.rounds]
    return [run.cpu for run in runs], [run.requests for run in runs]


def auth_cpu_lines(res: Results) -> list[str]:
    return [
        f"metering {label}: " + cpu_parts(*cpu_units(res, attr), "request")
        for label, attr in (("authorizations", "auth"), ("trivial GET", "get"))
    ]


def exhaustion_line(ex: Exhaustion) -> str:
    return (
        f"metering hard stop: {ex.requests} authorizations of {credits(ex.per)} credits raced "
        f"for {credits(ex.available)} available: {ex.allowed} allowed "
        f"({credits(ex.allowed_credits)} credits; {ex.expected} fit), overdraw "
        f"{credits(ex.overdraw)}"
    )


def _workers_threads(workers: int, threads: int) -> str:
    return (
        f"{workers} worker{'s' if workers != 1 else ''} x "
        f"{threads} thread{'s' if threads != 1 else ''}"
    )


def layout_line(layout: Layout, base: Layout) -> str:
    ex = layout.exhaustion
    return (
        f"metering authorizations, gunicorn {_workers_threads(layout.workers, layout.threads)}"
        f", {len(layout.runs)} rounds: {rate(layout.rate)} ({spread(layout.rates)}), "
        f"{layout.rate / base.rate:.2f}x of {base.name}; p99 {ms(layout.med('p99'))}; "
        f"{layout.per_transaction:.1f} calls per ledger transaction; server CPU "
        f"{layout.server_ms:.2f} ms per authorization; {layout.allowed:,} allowed; hard "
        f"stop {ex.allowed} allowed ({ex.expected} fit); overdraw {credits(layout.overdraw)}"
    )


def verdict(res: Results) -> str:
    return (
        f"authorizations {met(res.auth_ratio >= AUTH_RATIO_TARGET and res.overdraw == 0)} "
        f"({res.auth_ratio:.2f}x of GET, overdraw {res.overdraw})"
    )


def _rounds_table(res: Results, args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        "### 3. Authorizations on one hot customer",
        "",
        f"{args.auth_clients} concurrent clients (threads in "
        f"{min(max(args.clients, args.lag_clients, 4), args.auth_clients)} processes), "
        f"each request on a new connection. Per round, for {args.auth_duration:g} s each "
        f"(after {args.warmup:g} s warm-up), in alternating order: "
        f"`POST /api/v1/authorizations` (an estimate of {AUTH_VALUE} `llm.tokens`, "
        "model small: 0.5 credits, held; a new identifier each) on one fresh customer on "
        "the hard-stop plan with 1,000,000 paid credits, and `GET /api/v1/customers/{id}` "
        "of the same customer, served by the same gunicorn.",
        "",
        "| round | authorizations/s | p50 | p99 | trivial GET/s | p50 | p99 | ratio | "
        "allowed | load |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(res.rounds):
        lines.append(
            f"| {i + 1} | {r.auth.rate:,.0f} | {ms(r.auth.p50)} | {ms(r.auth.p99)} "
            f"| {r.get.rate:,.0f} | {ms(r.get.p50)} | {ms(r.get.p99)} | {r.ratio:.2f} "
            f"| {r.allowed:,} | {r.auth.load:.1f} |"
        )
    return lines


def _medians(res: Results) -> list[str]:
    auth = median([r.auth.rate for r in res.rounds])
    get = median([r.get.rate for r in res.rounds])
    auth_p99 = median([r.auth.p99 for r in res.rounds])
    get_p99 = median([r.get.p99 for r in res.rounds])
    return [
        f"| **median** | **{auth:,.0f}** | | **{ms(auth_p99)}** "
        f"| **{get:,.0f}** | | **{ms(get_p99)}** | **{res.auth_ratio:.2f}** | | |",
        "",
        f"Ratio {res.auth_ratio:.2f} = {res.auth_ratio / AUTH_RATIO_TARGET:.2f}x of the 0.5 "
        f"target; the trivial GET ran at {get / GET_REFERENCE:.2f}x of the "
        "1,600/s reference.",
        "",
        *CPU_HEADER,
        cpu_row("authorization, per request", *cpu_units(res, "auth"), 1),
        cpu_row("trivial GET, per request", *cpu_units(res, "get"), 1),
    ]


def _overdraw_text(ex: Exhaustion, args: argparse.Namespace) -> list[str]:
    return [
        "",
        f"Zero overdraw: after every round, the credits of the allowed "
        f"authorizations are at most what was available, the account's `held` equals "
        "its open holds and the allowed credits, available is not negative, and the "
        "clients' allow/deny counts equal the stored ones. Hard stop under a race: "
        f"{args.auth_clients} clients sent {ex.requests} authorizations of "
        f"{credits(ex.per)} credits against {credits(ex.available)} available: "
        f"{ex.allowed} allowed ({credits(ex.allowed_credits)} credits; {ex.expected} "
        f"fit), overdraw {credits(ex.overdraw)}.",
    ]


def _layouts_table(layouts: list[Layout], args: argparse.Namespace) -> list[str]:
    base = layouts[0]
    lines = [
        "",
        f"The same `POST /api/v1/authorizations` on one hot customer, {args.auth_clients} "
        "concurrent clients as above, against gunicorn laid out as each row says, "
        "restarted for each layout (the first is the Procfile's); a worker with one "
        "thread is gunicorn's sync worker. Per layout, after a few unmeasured requests "
        f"per client: {args.layout_runs} rounds of {args.layout_duration:g} s (after "
        f"{args.warmup:g} s warm-up), each on a fresh customer with 1,000,000 paid credits, "
        "checked for overdraw as above; then the hard-stop race above. Calls per ledger "
        "transaction are counted in PostgreSQL (distinct `xmin` of the run's ledger "
        "operations, one operation per allowed hold): the ledger combines the hold calls "
        "of one account that arrive together in one process into one transaction "
        "(`ledger.combiner`), so calls from separate processes never share one.",
        "",
        "| gunicorn layout | authorizations/s (median) | spread | vs "
        f"{base.name} | p50 | p99 | calls per ledger transaction | server CPU per "
        "authorization | web CPU | postgres CPU | allowed | hard stop: allowed / fit "
        "| overdraw | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for layout in layouts:
        ex = layout.exhaustion
        lines.append(
            f"| {_workers_threads(layout.workers, layout.threads)} | {layout.rate:,.0f} "
            f"| {spread(layout.rates)} | {layout.rate / base.rate:.2f}x "
            f"| {ms(layout.med('p50'))} | {ms(layout.med('p99'))} "
            f"| {layout.per_transaction:.1f} | {layout.server_ms:.2f} ms "
            f"| {layout.group_ms('web'):.2f} ms | {layout.group_ms('postgres'):.2f} ms "
            f"| {layout.allowed:,} | {ex.allowed} / {ex.expected} "
            f"| {credits(layout.overdraw)} | {layout.med('load'):.1f} |"
        )
    return lines


def section(res: Results, args: argparse.Namespace) -> list[str]:
    """Figure 3 in the docs: the rounds, their medians and CPU, the hard stop, the
    layouts of gunicorn, and the profiles of both requests."""
    lines = _rounds_table(res, args) + _medians(res)
    if res.exhaustion:
        lines += _overdraw_text(res.exhaustion, args)
    if res.layouts:
        lines += _layouts_table(res.layouts, args)
    return lines + profile_table(res.auth_profiles)
