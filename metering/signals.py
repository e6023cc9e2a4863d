"""What rating tells the layers above it (alerts, auto-recharge), without importing them.

Sent inside the rating transaction while the customer's account row is locked, so
receivers see the customer's numbers settled and two workers never evaluate one
customer at once; work that talks to the outside world goes in ``transaction.on_commit``.
"""

from __future__ import annotations

from django.dispatch import Signal

# kwargs: customer (plans.Customer), period_ids (set[int] of the periods charged),
# credits (Decimal: the credits this batch charged), customer_periods (every period of
# the customer, with plan_version__plan and subscription, as rating read them).
usage_rated = Signal()
