"""The errors services raise, rooted in one class every app's errors derive from.

A refusal carries a machine ``code``, a ``message`` that says what to change and the
``param`` it is about. What kind of refusal it is shows in its class: the thing named
does not exist (:class:`NotFound`), the request clashes with the state it met
(:class:`Conflict`), or else the request itself is wrong. Callers catch
:class:`DomainError`; the HTTP API maps it to a status in one place
(``billing_portal.api.errors``).

It lives in the lowest layer so that every app can derive from it.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class NotFound(DomainError):
    code = "resource_missing"


class Conflict(DomainError):
    code = "conflict"


class LedgerError(DomainError):
    code = "ledger_error"


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class InvalidRequest(LedgerError):
    code = "invalid_request"


class IdempotencyConflict(LedgerError, Conflict):
    code = "idempotency_key_reused"


class GrantNotActive(LedgerError, Conflict):
    code = "grant_not_active"


class HoldNotOpen(LedgerError, Conflict):
    code = "hold_not_open"
