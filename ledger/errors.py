"""Errors the ledger services raise; each says what to change."""

from __future__ import annotations


class LedgerError(Exception):
    code = "ledger_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class InvalidRequest(LedgerError):
    code = "invalid_request"


class IdempotencyConflict(LedgerError):
    code = "idempotency_key_reused"


class GrantNotActive(LedgerError):
    code = "grant_not_active"


class HoldNotOpen(LedgerError):
    code = "hold_not_open"
