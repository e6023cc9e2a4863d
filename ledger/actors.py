"""Who did something: a kind and an id, stored on every ledger operation as "kind:id".

Services take the text form (every operation row stores it); this value is how code
makes one and asks what kind it is, instead of building and matching string prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ActorKind(StrEnum):
    STAFF = "staff"  # a staff user in the admin
    API = "api"  # an operator's backend, by API key name
    PORTAL = "portal"  # a customer's user in the portal
    SYSTEM = "system"  # a job of ours: rating, renewals, expiry, auto-recharge
    STRIPE = "stripe"  # news from Stripe (webhooks)
    OTHER = "other"  # anything else (scripts, tests)


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> Actor:
        kind, sep, ident = text.partition(":")
        if sep and kind in ActorKind.__members__.values():
            return cls(ActorKind(kind), ident)
        return cls(ActorKind.OTHER, text)

    @classmethod
    def staff(cls, username: str) -> Actor:
        return cls(ActorKind.STAFF, username)

    @classmethod
    def api(cls, key_name: str) -> Actor:
        return cls(ActorKind.API, key_name)

    @classmethod
    def portal(cls, username: str) -> Actor:
        return cls(ActorKind.PORTAL, username)

    @classmethod
    def system(cls, job: str) -> Actor:
        return cls(ActorKind.SYSTEM, job)

    @property
    def is_staff(self) -> bool:
        return self.kind == ActorKind.STAFF
