"""The public HTTP API (``/api/v1``): the only place the product speaks HTTP to
operators' backends. One module per resource; what they share is in ``base``, ``auth``,
``idempotency``, ``errors`` and ``schema``. Domain apps (``ledger``, ``plans``,
``metering``) know nothing of it: views call their services and selectors, and
``errors`` maps their ``DomainError`` to HTTP.
"""
