"""What invoicing tells the apps above it (Stripe, alerts, outgoing webhooks), without
importing them.

Sent by invoicing's services inside the transaction that made the change, so what a
receiver writes commits or rolls back with it; a receiver that talks to the outside
world defers that work with ``transaction.on_commit``. A receiver may update the row it
is given (its sync state), and the sender returns that same instance.
"""

from __future__ import annotations

from django.dispatch import Signal

# kwargs: invoices (Invoices just created open: a batch of periods', or a credit pack
# purchase's one).
invoices_issued = Signal()
# kwargs: invoices (period Invoices just numbered, in one statement for the batch: each
# is finalized now, and is not saved again for it).
invoices_numbered = Signal()
# kwargs: invoice (an Invoice just voided).
invoice_voided = Signal()
# kwargs: credit_note (a CreditNote just issued, its lines written).
credit_note_issued = Signal()
# kwargs: credit_note (a CreditNote just voided).
credit_note_voided = Signal()
# kwargs: invoice (an unpaid Invoice whose collection just failed once more:
# payment_attempts counts the attempts so far). Sent once per attempt.
invoice_payment_failed = Signal()
# kwargs: invoice (an Invoice Stripe just collected: status paid). Sent once.
invoice_paid = Signal()
