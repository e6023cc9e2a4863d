from __future__ import annotations

from django.dispatch import Signal

# Sent once per subscription period, inside the transaction that hands it over, after
# the grace window for late events has passed. Arguments: period.
period_ready_for_invoicing = Signal()
