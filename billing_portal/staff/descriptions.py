"""What the customer reads about a staff action, kept apart from the staff's own memo.

Staff write a memo for each other and, optionally, a sentence for the customer. When they
leave the sentence blank, each action has its own default, built from the reason's label
(never its code, never the memo).
"""

from __future__ import annotations

STAFF_REASONS = [
    ("goodwill", "Goodwill"),
    ("service_outage", "Service outage"),
    ("billing_error", "Billing error"),
    ("duplicate_usage", "Duplicate usage"),
    ("wrong_usage", "Wrong usage reported"),
    ("customer_request", "Customer request"),
    ("fraud", "Fraud"),
    ("other", "Other (say why in the memo)"),
]
# "Other" is explained in the memo, which stays internal: the customer reads a neutral word.
CUSTOMER_REASON_WORDS = {**dict(STAFF_REASONS), "other": "Account adjustment"}

GRANT_DEFAULT = "Credits added to your account"


def reason_label(code: str) -> str:
    """A reason code as people read it: a known label, or the code in words."""
    return dict(STAFF_REASONS).get(code) or code.replace("_", " ").capitalize()


def customer_reason(code: str) -> str:
    return CUSTOMER_REASON_WORDS.get(code) or reason_label(code)


def grant_description(given: str = "") -> str:
    return given.strip() or GRANT_DEFAULT


def void_description(reason: str, given: str = "") -> str:
    return given.strip() or _with_reason("Credits removed", reason)


def expire_description(reason: str, given: str = "") -> str:
    return given.strip() or _with_reason("Credits expired early", reason)


def correction_description(reason: str, given: str = "") -> str:
    return given.strip() or _with_reason("Usage corrected", reason)


def _with_reason(words: str, reason: str) -> str:
    return f"{words}: {customer_reason(reason)}" if reason else words
