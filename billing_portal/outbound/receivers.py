"""Ledger and invoicing events that become outgoing webhook events."""
