"""Random sequences of ledger operations against the real services and a plain model.

The machine below drives ``ledger.services`` on PostgreSQL and, in step, an in-memory
model of one account: the draw-down order and balances from ``docs/domain.md``, the
services' documented rules for holds (a debit never takes what other open holds
reserve), void/expire, reversals and idempotent retries. After every step the stored
grants, holds and balances must equal the model's, and ``reconcile.run_checks()`` must
find nothing.

Each example runs inside a transaction that is rolled back at teardown, under a frozen
clock that only the machine moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from ledger import services
from ledger.errors import GrantNotActive, HoldNotOpen, IdempotencyConflict
from ledger.models import Account, CreditGrant, EntryKind, Hold
from ledger.reconcile import run_checks
from ledger.selectors import account_balance

START = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
# Coarse time steps make equal expiries, equal effective times and exact boundaries common.
TICK = timedelta(minutes=10)
MICRO = Decimal("0.000001")
ZERO = Decimal("0")
NEVER = datetime.max.replace(tzinfo=UTC)

METERS = ("llm.big", "llm.small")
WORKSPACES = ("ws-a", "ws-b")
CATEGORIES = ("included", "promotional", "paid", "rollover")
FREE_FIRST = {"included": 0, "rollover": 0, "promotional": 0, "paid": 1}

MAX_EXAMPLES = 60
STEPS_PER_EXAMPLE = 50
MIN_STEPS = 2000

SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS_PER_EXAMPLE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Steps whose invariants were checked, over the whole run of the test below.
steps_checked = 0


# --- strategies -----------------------------------------------------------------------


def _micro(n: int) -> str:
    return f"{Decimal(n).scaleb(-6):f}"


def _amounts(max_whole: int, *, zero: bool) -> st.SearchStrategy[str]:
    edges = ["0.000001", "0.5", "1.000001", *(["0"] if zero else [])]
    return st.one_of(
        st.integers(1, max_whole).map(str),
        st.integers(1, max_whole * 1_000_000).map(_micro),
        st.sampled_from(edges),
    )


grant_amounts = st.one_of(_amounts(40, zero=False), _amounts(300, zero=False))
small_amounts = _amounts(30, zero=True)
debit_amounts = st.one_of(_amounts(30, zero=False), _amounts(150, zero=True))
small_debits = _amounts(8, zero=False)
hold_amounts = st.one_of(small_amounts, _amounts(60, zero=True))
# Ties on priority and expiry are common, so the later tie-breakers decide often.
priorities = st.one_of(st.sampled_from([50, 50, 50, 0, 100]), st.integers(0, 100))
lifetimes = st.one_of(st.sampled_from([None, None, 12, 36, 72]), st.integers(1, 144))
# Weighted towards what most usage can pay with: unscoped and pooled grants, metered usage.
meter_scopes = st.sampled_from([(), (), (), (METERS[0],), (METERS[1],), METERS])
grant_workspaces = st.sampled_from([None, None, None, *WORKSPACES])
usage_meters = st.sampled_from(["", *METERS, *METERS])
usage_workspaces = st.sampled_from([None, *WORKSPACES])
allowances = st.one_of(st.just(ZERO), st.none(), st.sampled_from([Decimal("5"), Decimal("0.5")]))
shift_ticks = st.integers(1, 3)


@dataclass(frozen=True)
class GrantSpec:
    amount: str
    category: str
    priority: int
    effective_ticks: int  # from now
    lifetime_ticks: int | None  # from effective_at; None: never expires
    applies_to: tuple[str, ...]
    workspace: str | None


grant_specs = st.builds(
    GrantSpec,
    amount=grant_amounts,
    category=st.sampled_from(CATEGORIES),
    priority=priorities,
    effective_ticks=st.integers(-6, 2),
    lifetime_ticks=lifetimes,
    applies_to=meter_scopes,
    workspace=grant_workspaces,
)


# --- the model ------------------------------------------------------------------------


@dataclass
class GrantModel:
    pk: int
    seq: int
    amount: Decimal
    remaining: Decimal
    category: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    applies_to: tuple[str, ...]
    workspace: str | None
    key: str
    status: str = "active"


@dataclass
class HoldModel:
    pk: int
    credits: Decimal
    meter: str
    workspace: str | None
    expires_at: datetime
    key: str
    allowance: Decimal | None
    status: str = "open"
    capture_cause: str | None = None


@dataclass
class DebitModel:
    """What one consume or capture took: per grant, in draw-down order, and the overage."""

    cause_id: str
    amount: Decimal
    takes: list[tuple[int, Decimal]]
    overage: Decimal
    entry_pks: list[int] = field(default_factory=list)
    # Set for a consume (its arguments, to retry it); None for a capture.
    consume_key: str | None = None
    meter: str = ""
    workspace: str | None = None
    hold_pk: int | None = None
    reversal_pks: list[int] | None = None

    @property
    def consumed(self) -> Decimal:
        return sum((take for _, take in self.takes), ZERO)


def _draw_down_order(grant: GrantModel) -> tuple[object, ...]:
    # domain.md: lower priority number; earlier expiry, none last; free before paid;
    # earlier effective_at; earlier creation.
    return (
        grant.priority,
        grant.expires_at is None,
        grant.expires_at or NEVER,
        FREE_FIRST[grant.category],
        grant.effective_at,
        grant.seq,
    )


class LedgerModel:
    def __init__(self) -> None:
        self.grants: dict[int, GrantModel] = {}
        self.holds: dict[int, HoldModel] = {}
        self.debits: dict[str, DebitModel] = {}
        self.held = ZERO

    # reads

    def _in_time(self, grant: GrantModel, at: datetime) -> bool:
        return grant.effective_at <= at and (grant.expires_at is None or grant.expires_at > at)

    def usable(self, meter: str, workspace: str | None, at: datetime) -> list[GrantModel]:
        return [
            g
            for g in self.grants.values()
            if g.status == "active"
            and g.remaining > 0
            and self._in_time(g, at)
            and (not g.applies_to or meter in g.applies_to)
            and (g.workspace is None or g.workspace == workspace)
        ]

    def posted_in_scope(self, meter: str, workspace: str | None, at: datetime) -> Decimal:
        return sum((g.remaining for g in self.usable(meter, workspace, at)), ZERO)

    def posted(self, at: datetime) -> Decimal:
        return sum(
            (
                g.remaining
                for g in self.grants.values()
                if g.status == "active" and self._in_time(g, at)
            ),
            ZERO,
        )

    def open_holds_total(self) -> Decimal:
        return sum((h.credits for h in self.holds.values() if h.status == "open"), ZERO)

    # writes

    def debit(
        self, cause_id: str, amount: Decimal, meter: str, workspace: str | None, at: datetime
    ) -> DebitModel:
        """Take what is in scope and not reserved by open holds; the rest is overage."""
        available = max(ZERO, self.posted_in_scope(meter, workspace, at) - self.held)
        left = min(amount, available)
        takes: list[tuple[int, Decimal]] = []
        for grant in sorted(self.usable(meter, workspace, at), key=_draw_down_order):
            if left == 0:
                break
            take = min(grant.remaining, left)
            grant.remaining -= take
            if grant.remaining == 0:
                grant.status = "depleted"
            takes.append((grant.pk, take))
            left -= take
        consumed = sum((take for _, take in takes), ZERO)
        record = DebitModel(
            cause_id=cause_id, amount=amount, takes=takes, overage=amount - consumed
        )
        self.debits[cause_id] = record
        return record

    def close_grant(self, grant: GrantModel, status: str) -> None:
        grant.remaining = ZERO
        grant.status = status

    def reverse(
        self, record: DebitModel, at: datetime
    ) -> tuple[list[tuple[int | None, Decimal]], list[tuple[str, int, Decimal]]]:
        """Give credits back to their grants; write off what lands in a closed grant."""
        returned: list[tuple[int | None, Decimal]] = []
        for pk, take in record.takes:
            grant = self.grants[pk]
            grant.remaining += take
            if grant.status == "depleted":
                grant.status = "active"
            returned.append((pk, take))
        if record.overage > 0:
            returned.append((None, record.overage))
        write_offs: list[tuple[str, int, Decimal]] = []
        # Inside the late-usage window after its expiry a grant keeps what is given back,
        # for its late events; after it, what comes back is written off at once.
        late_usage_until = at - timedelta(seconds=django_settings.BILLING_GRACE_PERIOD_SECONDS)
        for pk in sorted({pk for pk, _ in record.takes}):
            grant = self.grants[pk]
            expired = grant.expires_at is not None and grant.expires_at <= late_usage_until
            if grant.status in ("active", "depleted") and not expired:
                continue
            kind = "void" if grant.status == "voided" else "expire"
            write_offs.append((kind, pk, -grant.remaining))
            grant.remaining = ZERO
            if grant.status != "voided":
                grant.status = "expired"
        return returned, write_offs


# --- the machine ----------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    grants = Bundle("grants")
    holds = Bundle("holds")
    causes = Bundle("causes")

    def __init__(self) -> None:
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self._travel = time_machine.travel(START, tick=False)
        self._clock = self._travel.start()
        self._counter = 0
        self._checked_once = False
        self.model = LedgerModel()
        try:
            self.account = services.account_create()
            # Another customer's credits, which nothing done to the first account may touch.
            self.bystander = services.account_create()
            self.bystander_grant = services.credit_grant_create(
                account=self.bystander, amount="100", category="paid", actor="test", priority=0
            ).pk
            decision = services.hold_create(
                account=self.bystander,
                amount="10",
                expires_at=START + timedelta(days=3650),
                actor="test",
            )
            assert decision.hold is not None
            self.bystander_hold = decision.hold.pk
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        try:
            self._travel.stop()
        finally:
            transaction.set_rollback(True)
            self._atomic.__exit__(None, None, None)

    # helpers

    def _next(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def _now(self) -> datetime:
        return timezone.now()

    def _shift(self, delta: timedelta) -> None:
        if delta > timedelta(0):
            self._clock.shift(delta)

    def _check_debit(self, debit: services.Debit, record: DebitModel) -> None:
        assert debit.consumed == record.consumed, (debit.consumed, record)
        assert debit.overage == record.overage, (debit.overage, record)
        assert debit.consumed + debit.overage == record.amount
        got = [
            (e.kind, e.grant_id, e.credits)
            for e in debit.entries
            if e.kind in (EntryKind.CONSUME, EntryKind.OVERAGE)
        ]
        expected: list[tuple[str, int | None, Decimal]] = [
            (EntryKind.CONSUME, pk, -take) for pk, take in record.takes
        ]
        if record.overage > 0:
            expected.append((EntryKind.OVERAGE, None, -record.overage))
        assert got == expected, (got, expected)

    @staticmethod
    def _debit_entry_pks(debit: services.Debit) -> list[int]:
        return [e.pk for e in debit.entries if e.kind in (EntryKind.CONSUME, EntryKind.OVERAGE)]

    # grants

    def _grant(
        self, spec: GrantSpec, tied_to: GrantModel | None = None, full_tie: bool = False
    ) -> int:
        now = self._now()
        effective_at = now + spec.effective_ticks * TICK
        expires_at = None
        if spec.lifetime_ticks is not None:
            expires_at = effective_at + spec.lifetime_ticks * TICK
        if tied_to is not None:
            # Same priority and expiry as an existing grant: the later tie-breakers decide.
            spec = replace(spec, priority=tied_to.priority)
            expires_at = tied_to.expires_at
            if full_tie:
                # Also the same effective_at and category rank (free categories rank
                # alike): only the order of creation is left.
                effective_at = tied_to.effective_at
                if (spec.category == "paid") != (tied_to.category == "paid"):
                    spec = replace(spec, category=tied_to.category)
            elif expires_at is not None and effective_at >= expires_at:
                effective_at = expires_at - TICK
        key = self._next("grant")
        grant = services.credit_grant_create(
            account=self.account,
            amount=spec.amount,
            category=spec.category,
            actor="test",
            priority=spec.priority,
            effective_at=effective_at,
            expires_at=expires_at,
            applies_to=spec.applies_to,
            workspace=spec.workspace,
            idempotency_key=key,
        )
        model = GrantModel(
            pk=grant.pk,
            seq=len(self.model.grants),
            amount=Decimal(spec.amount),
            remaining=Decimal(spec.amount),
            category=spec.category,
            priority=spec.priority,
            effective_at=effective_at,
            expires_at=expires_at,
            applies_to=spec.applies_to,
            workspace=spec.workspace,
            key=key,
        )
        # Created past its expiry and past the window in which late usage may draw on it.
        grace = timedelta(seconds=django_settings.BILLING_GRACE_PERIOD_SECONDS)
        if expires_at is not None and expires_at <= now - grace:
            self.model.close_grant(model, "expired")
        self.model.grants[grant.pk] = model
        assert grant.amount == model.amount
        assert (grant.remaining, grant.status) == (model.remaining, model.status)
        return grant.pk

    @initialize(target=grants, specs=st.lists(grant_specs, max_size=8))
    def opening_grants(self, specs: list[GrantSpec]) -> object:
        return multiple(*(self._grant(spec) for spec in specs))

    @rule(target=grants, spec=grant_specs)
    def credit_grant_create(self, spec: GrantSpec) -> int:
        return self._grant(spec)

    @rule(
        target=grants,
        other=grants,
        spec=grant_specs,
        same_scope=st.booleans(),
        full_tie=st.booleans(),
    )
    def credit_grant_create_tied(
        self, other: int, spec: GrantSpec, same_scope: bool, full_tie: bool
    ) -> int:
        tied_to = self.model.grants[other]
        if same_scope:
            spec = replace(spec, applies_to=tied_to.applies_to, workspace=tied_to.workspace)
        return self._grant(spec, tied_to, full_tie)

    @rule(grant=grants, change=st.sampled_from([None, None, "amount", "category"]))
    def credit_grant_create_again(self, grant: int, change: str | None) -> None:
        """Same idempotency key: the first grant back, or a conflict if the grant differs."""
        g = self.model.grants[grant]
        amount = g.amount + 1 if change == "amount" else g.amount
        category = g.category
        if change == "category":
            category = CATEGORIES[(CATEGORIES.index(g.category) + 1) % len(CATEGORIES)]

        def create() -> CreditGrant:
            return services.credit_grant_create(
                account=self.account,
                amount=amount,
                category=category,
                actor="test",
                priority=g.priority,
                effective_at=g.effective_at,
                expires_at=g.expires_at,
                applies_to=g.applies_to,
                workspace=g.workspace,
                idempotency_key=g.key,
            )

        if change is not None:
            with pytest.raises(IdempotencyConflict):
                create()
            return
        again = create()
        assert again.pk == g.pk
        assert (again.amount, again.remaining, again.status) == (g.amount, g.remaining, g.status)

    @rule(grant=grants, status=st.sampled_from(["voided", "expired"]))
    def credit_grant_void_or_expire(self, grant: int, status: str) -> None:
        g = self.model.grants[grant]
        obj = CreditGrant.objects.get(pk=grant)
        close = services.credit_grant_void if status == "voided" else services.credit_grant_expire
        if g.status in ("active", "depleted"):
            result = close(grant=obj, actor="staff:test")
            self.model.close_grant(g, status)
        elif g.status == status:
            result = close(grant=obj, actor="staff:test")
        else:
            with pytest.raises(GrantNotActive):
                close(grant=obj, actor="staff:test")
            return
        assert (result.remaining, result.status) == (g.remaining, g.status)

    @rule(ticks=st.integers(0, 6))
    def credit_grants_expire_due(self, ticks: int) -> None:
        self._shift(ticks * TICK)
        # Leftovers are written off once late usage can no longer draw on them.
        written_off_by = self._now() - timedelta(
            seconds=django_settings.BILLING_GRACE_PERIOD_SECONDS
        )
        due = [
            g
            for g in self.model.grants.values()
            if g.status in ("active", "depleted")
            and g.expires_at is not None
            and g.expires_at <= written_off_by
        ]
        count = services.credit_grants_expire_due()
        for g in due:
            self.model.close_grant(g, "expired")
        assert count == len(due)

    # consumption

    @rule(target=causes, amount=debit_amounts, meter=usage_meters, workspace=usage_workspaces)
    def credits_consume(self, amount: str, meter: str, workspace: str | None) -> str:
        return self._consume(amount, meter, workspace)

    @rule(target=causes, amount=small_debits, meter=usage_meters, workspace=usage_workspaces)
    def credits_consume_small(self, amount: str, meter: str, workspace: str | None) -> str:
        """A debit that leaves most grants partly used: it shows which grant went first."""
        return self._consume(amount, meter, workspace)

    def _consume(self, amount: str, meter: str, workspace: str | None) -> str:
        cause_id = self._next("evt")
        key = f"consume:{cause_id}"
        now = self._now()
        debit = services.credits_consume(
            account=self.account,
            amount=amount,
            cause=services.Cause("event", cause_id),
            actor="test",
            meter=meter,
            workspace=workspace,
            idempotency_key=key,
        )
        record = self.model.debit(cause_id, Decimal(amount), meter, workspace, now)
        record.consume_key, record.meter, record.workspace = key, meter, workspace
        self._check_debit(debit, record)
        record.entry_pks = self._debit_entry_pks(debit)
        return cause_id

    @rule(cause=causes)
    def debit_retry(self, cause: str) -> None:
        """Call the operation that made this debit again: the first result, no new entries."""
        record = self.model.debits[cause]
        if record.consume_key is not None:
            debit = services.credits_consume(
                account=self.account,
                amount=record.amount,
                cause=services.Cause("event", cause),
                actor="test",
                meter=record.meter,
                workspace=record.workspace,
                idempotency_key=record.consume_key,
            )
        else:
            assert record.hold_pk is not None
            debit = services.hold_capture(
                hold=Hold.objects.get(pk=record.hold_pk),
                amount=record.amount,
                cause=services.Cause("event", cause),
                actor="test",
            )
        self._check_debit(debit, record)
        assert self._debit_entry_pks(debit) == record.entry_pks

    @rule(cause=causes)
    def credits_reverse(self, cause: str) -> None:
        record = self.model.debits[cause]
        entries = services.credits_reverse(
            account=self.account,
            cause=services.Cause("event", cause),
            actor="staff:test",
            reason="event_cancelled",
        )
        if record.reversal_pks is not None:
            assert [e.pk for e in entries] == record.reversal_pks
            return
        returned, write_offs = self.model.reverse(record, self._now())
        got_returned = [(e.grant_id, e.credits) for e in entries if e.kind == EntryKind.REVERSAL]
        got_write_offs = [
            (e.kind, e.grant_id, e.credits) for e in entries if e.kind != EntryKind.REVERSAL
        ]
        assert got_returned == returned, (got_returned, returned)
        assert got_write_offs == write_offs, (got_write_offs, write_offs)
        record.reversal_pks = [e.pk for e in entries]

    # holds

    @rule(
        target=holds,
        amount=hold_amounts,
        allowance=allowances,
        meter=usage_meters,
        workspace=usage_workspaces,
        expiry_ticks=st.integers(1, 18),
    )
    def hold_create(
        self,
        amount: str,
        allowance: Decimal | None,
        meter: str,
        workspace: str | None,
        expiry_ticks: int,
    ) -> object:
        now = self._now()
        key = self._next("hold")
        expires_at = now + expiry_ticks * TICK
        decision = services.hold_create(
            account=self.account,
            amount=amount,
            expires_at=expires_at,
            actor="test",
            allowance=allowance,
            meter=meter,
            workspace=workspace,
            idempotency_key=key,
        )
        credits = Decimal(amount)
        available = self.model.posted_in_scope(meter, workspace, now) - self.model.held
        allowed = allowance is None or credits <= available + allowance
        if allowance == ZERO:
            # Hard stop: never past available, always up to it.
            assert decision.allowed == (available >= credits), (decision, available)
        assert decision.allowed == allowed, (decision, available, allowance)
        if not decision.allowed:
            assert decision.hold is None
            assert decision.available == available
            return multiple()
        assert decision.hold is not None
        assert decision.available == available - credits
        self.model.held += credits
        self.model.holds[decision.hold.pk] = HoldModel(
            pk=decision.hold.pk,
            credits=credits,
            meter=meter,
            workspace=workspace,
            expires_at=expires_at,
            key=key,
            allowance=allowance,
        )
        return decision.hold.pk

    @rule(hold=holds)
    def hold_create_retry(self, hold: int) -> None:
        h = self.model.holds[hold]
        decision = services.hold_create(
            account=self.account,
            amount=h.credits,
            expires_at=h.expires_at,
            actor="test",
            allowance=h.allowance,
            meter=h.meter,
            workspace=h.workspace,
            idempotency_key=h.key,
        )
        assert decision.allowed
        assert decision.hold is not None and decision.hold.pk == hold
        assert decision.hold.status == h.status
        expected = self.model.posted_in_scope(h.meter, h.workspace, self._now()) - self.model.held
        assert decision.available == expected

    @rule(
        target=causes,
        hold=holds,
        percent=st.one_of(st.sampled_from([0, 50, 100, 150, 400]), st.integers(0, 400)),
        nudge=st.sampled_from([-1, 0, 0, 1]),
    )
    def hold_capture(self, hold: int, percent: int, nudge: int) -> object:
        h = self.model.holds[hold]
        amount = (h.credits * percent / 100).quantize(MICRO, rounding=ROUND_DOWN)
        amount = max(ZERO, amount + nudge * MICRO)
        obj = Hold.objects.get(pk=hold)
        if h.status in ("released", "expired"):
            with pytest.raises(HoldNotOpen):
                services.hold_capture(
                    hold=obj, amount=amount, cause=services.Cause("event", "late"), actor="test"
                )
            return multiple()
        if h.status == "captured":
            assert h.capture_cause is not None
            self.debit_retry(h.capture_cause)
            return multiple()
        cause_id = self._next("cap")
        now = self._now()
        debit = services.hold_capture(
            hold=obj, amount=amount, cause=services.Cause("event", cause_id), actor="test"
        )
        h.status = "captured"
        h.capture_cause = cause_id
        self.model.held -= h.credits
        record = self.model.debit(cause_id, amount, h.meter, h.workspace, now)
        record.hold_pk = hold
        self._check_debit(debit, record)
        record.entry_pks = self._debit_entry_pks(debit)
        return cause_id

    @rule(hold=holds)
    def hold_release(self, hold: int) -> None:
        h = self.model.holds[hold]
        obj = Hold.objects.get(pk=hold)
        if h.status == "captured":
            with pytest.raises(HoldNotOpen):
                services.hold_release(hold=obj, actor="test")
            return
        result = services.hold_release(hold=obj, actor="test")
        if h.status == "open":
            h.status = "released"
            self.model.held -= h.credits
        assert result.status == h.status

    @rule(
        to_a_hold=st.booleans(),
        pick=st.integers(0, 1_000),
        ticks=shift_ticks,
        extra_seconds=st.sampled_from([0, 0, 1]),
    )
    def holds_expire(self, to_a_hold: bool, pick: int, ticks: int, extra_seconds: int) -> None:
        now = self._now()
        pending = sorted(
            (h for h in self.model.holds.values() if h.status == "open" and h.expires_at > now),
            key=lambda h: h.pk,
        )
        if to_a_hold and pending:
            target = pending[pick % len(pending)].expires_at
            self._shift(target - now + timedelta(seconds=extra_seconds))
        else:
            self._shift(ticks * TICK)
        now = self._now()
        due = [h for h in self.model.holds.values() if h.status == "open" and h.expires_at <= now]
        count = services.holds_expire()
        for h in due:
            h.status = "expired"
            self.model.held -= h.credits
        assert count == len(due)

    @rule(ticks=shift_ticks)
    def clock_advance(self, ticks: int) -> None:
        self._shift(ticks * TICK)

    # after every step

    @invariant()
    def ledger_matches_model(self) -> None:
        global steps_checked
        if self._checked_once:
            steps_checked += 1
        self._checked_once = True
        now = self._now()
        model = self.model

        # One read of every grant, hold and account: the bystander's must not have moved.
        grants = {
            pk: (account_id, remaining, status)
            for pk, account_id, remaining, status in CreditGrant.objects.values_list(
                "pk", "account_id", "remaining", "status"
            )
        }
        expected_grants = {
            g.pk: (self.account.pk, g.remaining, g.status) for g in model.grants.values()
        }
        expected_grants[self.bystander_grant] = (self.bystander.pk, Decimal(100), "active")
        assert grants == expected_grants, "per-grant remaining or status differs from the model"
        assert all(remaining >= 0 for _, remaining, _ in grants.values())

        holds = dict(Hold.objects.values_list("pk", "status"))
        expected_holds = {h.pk: h.status for h in model.holds.values()}
        expected_holds[self.bystander_hold] = "open"
        assert holds == expected_holds
        assert model.held == model.open_holds_total()
        held = dict(Account.objects.values_list("pk", "held"))
        assert held == {self.account.pk: model.held, self.bystander.pk: Decimal(10)}

        balance = account_balance(account=self.account)
        posted = model.posted(now)
        assert (balance.posted, balance.held, balance.available) == (
            posted,
            model.held,
            posted - model.held,
        )

        problems = [finding for finding in run_checks() if finding.problems]
        assert problems == [], problems


@pytest.mark.slow
@pytest.mark.django_db
# A passing run takes well under a minute; a failing one may shrink for up to five more.
@pytest.mark.timeout(600)
def test_ledger_services_match_the_model() -> None:
    global steps_checked
    steps_checked = 0
    run_state_machine_as_test(LedgerMachine, settings=SETTINGS)
    assert steps_checked >= MIN_STEPS, f"only {steps_checked} steps ran"
