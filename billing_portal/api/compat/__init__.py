"""Ingest endpoints that speak other metering products' protocols (Stripe meter events,
OpenMeter CloudEvents, Lago events), so their own SDKs work unchanged when pointed at us.

Each module only translates: the vendor's request into native events for
``billing_portal.api.events.events_accept`` (the one ingest path), and the outcome back
into the vendor's response and error shapes.
"""
