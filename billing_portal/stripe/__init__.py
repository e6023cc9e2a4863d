"""The Stripe integration: everything that talks to Stripe or listens to it.

It owns the adapter (``adapter``: the only module that imports the ``stripe`` library),
the push of invoices and credit notes to Stripe and the Stripe customer of each of our
customers (``sync``), payment of credit packs through Checkout or a saved card
(``payments``), the ``POST /webhooks/stripe`` endpoint (``webhooks``), the Celery tasks
that run those calls (``tasks``) and the receivers that queue a sync when invoicing
issues or voids something (``receivers``).

It depends on invoicing, never the reverse: invoicing announces its changes through
``billing_portal.invoicing.signals`` and keeps its own rows, including the Stripe ids,
the sync state and the stored webhook events.
"""
