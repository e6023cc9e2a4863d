from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from ledger import services
from ledger.models import Account, CreditGrant, GrantStatus, Hold, HoldStatus, LedgerEntry
from ledger.reconcile import run_checks
from ledger.selectors import account_balance
from ledger.signals import credit_grants_created
from tests.ledger import factories as f

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _hold(account: Account, amount: str, **kwargs: object) -> services.HoldDecision:
    return services.hold_create(
        account=account,
        amount=amount,
        expires_at=timezone.now() + timedelta(minutes=5),
        actor="test",
        **kwargs,  # type: ignore[arg-type]
    )


def _event(n: int) -> services.Cause:
    return services.Cause("event", str(n))


class TestAmounts:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (1.5, "not a float"),
            ("1.0000001", "more than 6 decimal places"),
            ("abc", "must be a number"),
            ("NaN", "finite"),
        ],
    )
    def test_it_refuses_amounts_that_are_not_exact_credits(
        self, value: object, message: str
    ) -> None:
        with pytest.raises(services.InvalidAmount, match=message):
            services.credits(value)  # type: ignore[arg-type]

    def test_it_refuses_a_grant_that_expires_before_it_starts(self) -> None:
        account = f.account()
        with pytest.raises(services.InvalidRequest, match="expires_at must be after effective_at"):
            services.credit_grant_create(
                account=account,
                amount="1",
                category="paid",
                actor="t",
                effective_at=NOW,
                expires_at=NOW,
            )
        assert not CreditGrant.objects.exists()

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("amount", "0", "greater than 0"),
            ("category", "gift", "category must be one of"),
            ("priority", 101, "between 0 and 100"),
        ],
    )
    def test_it_refuses_a_bad_grant_and_stores_nothing(
        self, field: str, value: object, message: str
    ) -> None:
        values: dict[str, object] = {"amount": "1", "category": "paid", "priority": 50}
        values[field] = value
        with pytest.raises(services.LedgerError, match=message):
            services.credit_grant_create(account=f.account(), actor="t", **values)  # type: ignore[arg-type]
        assert not LedgerEntry.objects.exists()


class TestHolds:
    def test_a_hold_reduces_available_at_once(self) -> None:
        account = f.account()
        f.grant(account, "100")
        decision = _hold(account, "30")
        assert decision.allowed and decision.available == Decimal("70")
        balance = account_balance(account=account)
        assert (balance.posted, balance.held, balance.available) == (100, 30, 70)

    def test_a_hard_stop_denies_what_is_not_available_and_writes_nothing(self) -> None:
        account = f.account()
        f.grant(account, "10")
        _hold(account, "8")
        denied = _hold(account, "2.000001", allowance=Decimal(0))
        assert not denied.allowed and denied.hold is None
        assert denied.available == Decimal("2")
        assert Hold.objects.count() == 1
        assert _hold(account, "2", allowance=Decimal(0)).allowed

    def test_a_soft_limit_allows_up_to_the_allowance_beyond_zero(self) -> None:
        account = f.account()
        f.grant(account, "10")
        assert not _hold(account, "12.5", allowance=Decimal("2")).allowed
        assert _hold(account, "12", allowance=Decimal("2")).allowed

    def test_no_limit_allows_any_hold(self) -> None:
        account = f.account()
        assert _hold(account, "1000", allowance=None).allowed
        assert account_balance(account=account).available == Decimal("-1000")

    def test_a_capture_below_the_hold_charges_actual_and_releases_the_rest(self) -> None:
        account = f.account()
        grant = f.grant(account, "100")
        hold = _hold(account, "60").hold
        assert hold is not None
        debit = services.hold_capture(hold=hold, amount="45", cause=_event(1), actor="t")
        assert (debit.consumed, debit.overage) == (Decimal("45"), Decimal("0"))
        grant.refresh_from_db()
        hold.refresh_from_db()
        assert grant.remaining == Decimal("55")
        assert hold.status == HoldStatus.CAPTURED and hold.captured_credits == Decimal("45")
        assert account_balance(account=account).held == 0

    def test_a_capture_above_the_hold_takes_only_unreserved_credits(self) -> None:
        account = f.account()
        f.grant(account, "100")
        first = _hold(account, "50").hold
        _hold(account, "40")  # another request's reservation
        assert first is not None
        debit = services.hold_capture(hold=first, amount="70", cause=_event(1), actor="t")
        # 50 reserved + 10 nobody reserved; the other 40 stay for the second hold.
        assert (debit.consumed, debit.overage) == (Decimal("60"), Decimal("10"))
        assert account_balance(account=account).available == Decimal("0")

    def test_a_hold_is_captured_once_and_a_retry_returns_the_first_debit(self) -> None:
        account = f.account()
        f.grant(account, "100")
        hold = _hold(account, "10").hold
        assert hold is not None
        first = services.hold_capture(hold=hold, amount="5", cause=_event(1), actor="t")
        again = services.hold_capture(hold=hold, amount="5", cause=_event(1), actor="t")
        assert again.operation.pk == first.operation.pk
        assert CreditGrant.objects.get().remaining == Decimal("95")
        with pytest.raises(services.HoldNotOpen, match="already captured"):
            services.hold_release(hold=hold, actor="t")

    def test_a_released_hold_cannot_be_captured(self) -> None:
        account = f.account()
        f.grant(account, "100")
        hold = _hold(account, "10").hold
        assert hold is not None
        services.hold_release(hold=hold, actor="t")
        services.hold_release(hold=hold, actor="t")  # a retry changes nothing
        with pytest.raises(services.HoldNotOpen, match="already released"):
            services.hold_capture(hold=hold, amount="5", cause=_event(1), actor="t")
        assert LedgerEntry.objects.filter(kind="release").count() == 1
        assert account_balance(account=account).available == Decimal("100")

    def test_holds_past_expiry_are_released_by_the_sweep(self) -> None:
        account = f.account()
        with time_machine.travel(NOW, tick=False) as clock:
            f.grant(account, "100")
            soon = services.hold_create(
                account=account, amount="10", expires_at=NOW + timedelta(seconds=30), actor="t"
            ).hold
            later = services.hold_create(
                account=account, amount="20", expires_at=NOW + timedelta(minutes=5), actor="t"
            ).hold
            clock.shift(timedelta(seconds=31))
            assert services.holds_expire() == 1
            assert services.holds_expire() == 0
        assert soon is not None and later is not None
        soon.refresh_from_db()
        later.refresh_from_db()
        assert (soon.status, later.status) == (HoldStatus.EXPIRED, HoldStatus.OPEN)
        assert Account.objects.get(pk=account.pk).held == Decimal("20")


class TestConsumption:
    def test_a_plain_debit_never_takes_credits_a_hold_reserved(self) -> None:
        account = f.account()
        f.grant(account, "100")
        hold = _hold(account, "80").hold
        debit = services.credits_consume(account=account, amount="30", cause=_event(1), actor="t")
        assert (debit.consumed, debit.overage) == (Decimal("20"), Decimal("10"))
        assert hold is not None
        captured = services.hold_capture(hold=hold, amount="80", cause=_event(2), actor="t")
        assert captured.overage == 0

    def test_one_entry_per_grant_touched_and_one_for_overage(self) -> None:
        account = f.account()
        f.grant(account, "3", priority=1)
        f.grant(account, "4", priority=2)
        debit = services.credits_consume(account=account, amount="10", cause=_event(7), actor="t")
        assert [(e.kind, e.credits) for e in debit.entries] == [
            ("consume", Decimal("-3")),
            ("consume", Decimal("-4")),
            ("overage", Decimal("-3")),
        ]
        assert {(e.cause_type, e.cause_id) for e in debit.entries} == {("event", "7")}
        assert CreditGrant.objects.filter(status=GrantStatus.DEPLETED).count() == 2

    def test_a_reversal_gives_credits_back_to_their_grant(self) -> None:
        account = f.account()
        grant = f.grant(account, "10")
        services.credits_consume(account=account, amount="12", cause=_event(1), actor="t")
        services.credits_reverse(account=account, cause=_event(1), actor="t", reason="cancel")
        services.credits_reverse(account=account, cause=_event(1), actor="t", reason="cancel")
        grant.refresh_from_db()
        assert (grant.remaining, grant.status) == (Decimal("10"), GrantStatus.ACTIVE)
        overage = LedgerEntry.objects.filter(kind__in=["overage", "reversal"], grant=None)
        assert sum(e.credits for e in overage) == 0

    def test_a_reversal_into_an_expired_grant_is_written_off_again(self) -> None:
        account = f.account()
        with time_machine.travel(NOW, tick=False) as clock:
            grant = services.credit_grant_create(
                account=account,
                amount="10",
                category="included",
                actor="t",
                expires_at=NOW + timedelta(days=1),
            )
            services.credits_consume(account=account, amount="4", cause=_event(1), actor="t")
            clock.shift(timedelta(days=2))
            services.credit_grants_expire_due()
            services.credits_reverse(account=account, cause=_event(1), actor="t", reason="cancel")
        grant.refresh_from_db()
        assert (grant.remaining, grant.status) == (Decimal("0"), GrantStatus.EXPIRED)
        kinds = list(LedgerEntry.objects.filter(grant=grant).values_list("kind", "credits"))
        assert kinds == [
            ("grant", Decimal("10")),
            ("consume", Decimal("-4")),
            ("expire", Decimal("-6")),
            ("reversal", Decimal("4")),
            ("expire", Decimal("-4")),
        ]


class TestVoidAndExpire:
    def test_a_void_writes_off_what_is_left_and_keeps_what_was_consumed(self) -> None:
        account = f.account()
        grant = f.grant(account, "10")
        services.credits_consume(account=account, amount="4", cause=_event(1), actor="t")
        services.credit_grant_void(grant=grant, actor="staff:ann", reason="refund")
        grant.refresh_from_db()
        assert (grant.status, grant.remaining) == (GrantStatus.VOIDED, Decimal("0"))
        void = LedgerEntry.objects.get(grant=grant, kind="void")
        assert void.credits == Decimal("-6")
        assert void.operation.actor == "staff:ann" and void.operation.reason == "refund"
        with pytest.raises(services.GrantNotActive, match="already voided"):
            services.credit_grant_expire(grant=grant, actor="t")

    def test_the_sweep_expires_grants_past_expiry_once(self) -> None:
        account = f.account()
        with time_machine.travel(NOW, tick=False) as clock:
            expiring = services.credit_grant_create(
                account=account,
                amount="10",
                category="included",
                actor="t",
                expires_at=NOW + timedelta(hours=1),
            )
            lasting = f.grant(account, "5")
            clock.shift(timedelta(hours=1))
            assert account_balance(account=account).posted == Decimal("5")
            # Late usage from before the expiry may still draw on it for the grace window.
            assert services.credit_grants_expire_due() == 0
            clock.shift(timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS))
            assert services.credit_grants_expire_due() == 1
            assert services.credit_grants_expire_due() == 0
        expiring.refresh_from_db()
        lasting.refresh_from_db()
        assert (expiring.status, expiring.remaining) == (GrantStatus.EXPIRED, 0)
        assert lasting.status == GrantStatus.ACTIVE
        assert LedgerEntry.objects.get(grant=expiring, kind="expire").credits == Decimal("-10")

    def test_many_grants_expire_at_once_as_each_would_alone(self) -> None:
        first, second = f.account(), f.account()
        partly = f.grant(first, "10")
        services.credits_consume(account=first, amount="4", cause=_event(1), actor="t")
        depleted = f.grant(first, "3", priority=1)  # drawn first
        services.credits_consume(account=first, amount="3", cause=_event(2), actor="t")
        voided = f.grant(first, "7")
        services.credit_grant_void(grant=voided, actor="staff:ann")
        untouched = f.grant(second, "2.5")
        ids = [partly.pk, depleted.pk, voided.pk, untouched.pk]

        written_off = services.credit_grants_expire(
            grant_ids=ids, actor="system:test", reason="period_end"
        )

        assert written_off == {
            partly.pk: Decimal("6"),
            depleted.pk: 0,
            untouched.pk: Decimal("2.5"),
        }
        closed = CreditGrant.objects.filter(pk__in=ids).order_by("pk")
        assert [(g.status, g.remaining) for g in closed] == [
            (GrantStatus.EXPIRED, 0),
            (GrantStatus.EXPIRED, 0),
            (GrantStatus.VOIDED, 0),
            (GrantStatus.EXPIRED, 0),
        ]
        expiries = LedgerEntry.objects.filter(kind="expire").order_by("pk")
        assert [(e.grant_id, e.account_id, e.credits) for e in expiries] == [
            (partly.pk, first.pk, Decimal("-6")),
            (untouched.pk, second.pk, Decimal("-2.5")),
        ]
        # One operation per grant closed, as credit_grant_expire writes, named as the cause.
        operations = {e.grant_id: e.operation for e in expiries}
        assert {(o.kind, o.actor, o.reason) for o in operations.values()} == {
            ("expire", "system:test", "period_end")
        }
        assert all(e.cause_id == str(e.operation_id) for e in expiries)
        # Again: nothing left to close, nothing written.
        assert (
            services.credit_grants_expire(grant_ids=ids, actor="system:test", reason="period_end")
            == {}
        )
        assert LedgerEntry.objects.filter(kind="expire").count() == 2
        assert {r.check: r.problems for r in run_checks() if r.problems} == {}


class TestGrantBatches:
    def _request(self, account: Account, amount: str, key: str) -> services.GrantRequest:
        return services.GrantRequest(
            account_id=account.pk,
            amount=Decimal(amount),
            category="rollover",
            actor="system:test",
            idempotency_key=key,
            source_type="test",
            source_id=key,
        )

    def test_a_batch_creates_each_grant_once_and_announces_only_the_new_ones(self) -> None:
        first, second = f.account(), f.account()
        earlier = services.credit_grants_create(requests=[self._request(first, "5", "r1")])[0]
        announced: list[list[int]] = []

        def receiver(sender: object, grants: list[CreditGrant], **kwargs: object) -> None:
            announced.append([grant.pk for grant in grants])

        credit_grants_created.connect(receiver)
        try:
            made = services.credit_grants_create(
                requests=[
                    self._request(second, "7", "r2"),
                    self._request(first, "5", "r1"),  # a replay
                    self._request(first, "1.5", "r3"),
                ]
            )
        finally:
            credit_grants_created.disconnect(receiver)

        assert made[1] == earlier
        assert [(g.account_id, g.amount, g.remaining, g.idempotency_key) for g in made] == [
            (second.pk, Decimal(7), Decimal(7), "r2"),
            (first.pk, Decimal(5), Decimal(5), "r1"),
            (first.pk, Decimal("1.5"), Decimal("1.5"), "r3"),
        ]
        assert announced == [[made[0].pk, made[2].pk]]
        entries = LedgerEntry.objects.filter(kind="grant").order_by("pk")
        assert [(e.grant_id, e.credits, e.cause_id) for e in entries] == [
            (earlier.pk, Decimal(5), "r1"),
            (made[0].pk, Decimal(7), "r2"),
            (made[2].pk, Decimal("1.5"), "r3"),
        ]
        assert account_balance(account=first).posted == Decimal("6.5")
        assert {r.check: r.problems for r in run_checks() if r.problems} == {}

    def test_a_conflicting_replay_writes_nothing_of_its_batch(self) -> None:
        account = f.account()
        services.credit_grants_create(requests=[self._request(account, "5", "r1")])
        with pytest.raises(services.IdempotencyConflict, match="r1"):
            services.credit_grants_create(
                requests=[self._request(account, "2", "r2"), self._request(account, "6", "r1")]
            )
        with pytest.raises(services.InvalidRequest, match="same idempotency key"):
            services.credit_grants_create(
                requests=[self._request(account, "2", "r4"), self._request(account, "2", "r4")]
            )
        assert list(CreditGrant.objects.values_list("idempotency_key", flat=True)) == ["r1"]


class TestRetries:
    def test_a_retried_debit_with_another_amount_is_a_conflict(self) -> None:
        account = f.account()
        f.grant(account, "10")
        services.credits_consume(
            account=account, amount="1", cause=_event(1), actor="t", idempotency_key="k1"
        )
        with pytest.raises(services.IdempotencyConflict, match="already used for a debit of 1"):
            services.credits_consume(
                account=account, amount="5", cause=_event(1), actor="t", idempotency_key="k1"
            )
        assert CreditGrant.objects.get().remaining == Decimal(9)

    def test_a_retried_hold_with_another_amount_is_a_conflict(self) -> None:
        account = f.account()
        f.grant(account, "10")
        _hold(account, "2", idempotency_key="h1")
        with pytest.raises(services.IdempotencyConflict, match="already used for a hold of 2"):
            _hold(account, "3", idempotency_key="h1")
        assert Account.objects.get(pk=account.pk).held == Decimal(2)

    def test_reversing_before_the_charge_does_not_use_up_the_reversal(self) -> None:
        account = f.account()
        grant = f.grant(account, "10")
        assert (
            services.credits_reverse(account=account, cause=_event(1), actor="t", reason="x") == []
        )
        services.credits_consume(account=account, amount="4", cause=_event(1), actor="t")
        reversed_entries = services.credits_reverse(
            account=account, cause=_event(1), actor="t", reason="x"
        )
        assert [e.credits for e in reversed_entries] == [Decimal(4)]
        grant.refresh_from_db()
        assert grant.remaining == Decimal(10)

    def test_a_write_off_on_reversal_records_when_the_grant_closed(self) -> None:
        account = f.account()
        with time_machine.travel(NOW, tick=False) as clock:
            grant = services.credit_grant_create(
                account=account,
                amount="10",
                category="paid",
                actor="t",
                expires_at=NOW + timedelta(hours=1),
            )
            services.credits_consume(account=account, amount="4", cause=_event(1), actor="t")
            clock.shift(timedelta(hours=2))
            services.credits_reverse(account=account, cause=_event(1), actor="t", reason="x")
        grant.refresh_from_db()
        assert (grant.status, grant.closed_at) == (GrantStatus.EXPIRED, NOW + timedelta(hours=2))

    def test_a_reversal_inside_the_late_usage_window_stays_on_its_grant_until_the_sweep(
        self,
    ) -> None:
        account = f.account()
        with time_machine.travel(NOW, tick=False) as clock:
            grant = services.credit_grant_create(
                account=account,
                amount="10",
                category="paid",
                actor="t",
                expires_at=NOW + timedelta(hours=1),
            )
            services.credits_consume(account=account, amount="4", cause=_event(1), actor="t")
            # Past the expiry, inside the grace window: late events may still draw on it.
            clock.shift(timedelta(hours=1, minutes=30))
            services.credits_reverse(account=account, cause=_event(1), actor="t", reason="x")
            grant.refresh_from_db()
            assert (grant.remaining, grant.status) == (Decimal("10"), GrantStatus.ACTIVE)
            assert not LedgerEntry.objects.filter(grant=grant, kind="expire").exists()
            clock.shift(timedelta(hours=1))
            assert services.credit_grants_expire_due() == 1
        grant.refresh_from_db()
        assert (grant.remaining, grant.status) == (Decimal("0"), GrantStatus.EXPIRED)
        kinds = list(LedgerEntry.objects.filter(grant=grant).values_list("kind", "credits"))
        assert kinds == [
            ("grant", Decimal("10")),
            ("consume", Decimal("-4")),
            ("reversal", Decimal("4")),
            ("expire", Decimal("-10")),
        ]
