"""What the ledger tells the layers above it, without importing them.

Signals are sent inside the writing transaction; a receiver that talks to the outside
world defers that work with ``transaction.on_commit``.
"""

from __future__ import annotations

from django.dispatch import Signal

# kwargs: grants (the new CreditGrants, one or a batch). Not sent for an idempotent replay.
credit_grants_created = Signal()
