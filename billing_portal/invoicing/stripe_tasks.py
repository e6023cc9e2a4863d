"""Tasks that talk to Stripe (filled in with the Stripe adapter)."""
