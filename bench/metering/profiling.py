"""A profile of one request (or one rating batch) in this process: named functions
wrapped with timers, the SQL each runs counted through Django's cursors."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.stats import ms

REST = "the rest (Django, DRF, middleware, response)"


@dataclass
class Phase:
    name: str
    seconds: float  # per request, nested phases excluded
    sql: float
    statements: float


class PhaseProbe:
    """Wraps named functions with timers (nested calls are subtracted from their caller)
    and counts the SQL statements each runs through Django's cursors."""

    def __init__(self) -> None:
        self.inclusive: dict[str, float] = defaultdict(float)
        self.nested: dict[str, float] = defaultdict(float)
        self.sql: dict[str, float] = defaultdict(float)
        self.statements: Counter[str] = Counter()
        self.order: list[str] = []
        self.top = 0.0
        self.stack: list[str] = []
        self._patches: list[tuple[Any, str, Any, bool]] = []

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        if name not in self.order:
            self.order.append(name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.stack.append(name)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.stack.pop()
                self.inclusive[name] += elapsed
                if self.stack:
                    self.nested[self.stack[-1]] += elapsed
                else:
                    self.top += elapsed

        return wrapper

    def replace(self, owner: Any, attr: str, value: Any) -> None:
        own = attr in vars(owner)
        self._patches.append((owner, attr, vars(owner).get(attr), own))
        setattr(owner, attr, value)

    def patch(self, owner: Any, attr: str, name: str) -> None:
        self.replace(owner, attr, self.timed(name, getattr(owner, attr)))

    def restore(self) -> None:
        for owner, attr, original, own in reversed(self._patches):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)
        self._patches.clear()

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Count the SQL while the block runs; take the timers off at its end."""
        from django.db import connection

        try:
            with connection.execute_wrapper(self):
                yield
        finally:
            self.restore()

    def phases(self, per: float, statements_per: float) -> list[Phase]:
        """The timed phases, in the order first patched: time and SQL divided by ``per``,
        statements by ``statements_per``."""
        return [
            Phase(
                name,
                (self.inclusive[name] - self.nested[name]) / per,
                self.sql[name] / per,
                self.statements[name] / statements_per,
            )
            for name in self.order
        ]

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any
    ) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, ctx)
        finally:
            where = self.stack[-1] if self.stack else ""
            self.sql[where] += time.perf_counter() - started
            self.statements[where] += 1


@dataclass
class RequestProfile:
    label: str
    requests: int
    total: float  # per unit
    phases: list[Phase]
    unit: str = "request"
    intro: str = ""
    statements_per: str = ""  # what the statements column counts, if not per unit

    def phase(self, name: str) -> Phase:
        return next((p for p in self.phases if p.name == name), Phase(name, 0.0, 0.0, 0.0))

    @property
    def statements(self) -> float:
        return sum(p.statements for p in self.phases)

    @property
    def sql(self) -> float:
        return sum(p.sql for p in self.phases)


def profile_requests(
    label: str, probe: PhaseProbe, send: Callable[[int], Any], requests: int
) -> RequestProfile:
    """``send`` called ``requests`` times with the probe's timers on; what no timer
    covers is :data:`REST`."""
    totals = 0.0
    with probe.measuring():
        for i in range(requests):
            started = time.perf_counter()
            send(i)
            totals += time.perf_counter() - started
    phases = probe.phases(requests, requests)
    phases.append(
        Phase(
            REST,
            (totals - probe.top) / requests,
            probe.sql[""] / requests,
            probe.statements[""] / requests,
        )
    )
    return RequestProfile(label, requests, totals / requests, phases)


def django_client(key: str) -> Any:
    from django.test import Client

    return Client(HTTP_AUTHORIZATION=f"Bearer {key}", SERVER_NAME="localhost")


def common_phases(probe: PhaseProbe) -> None:
    from billing_portal.api import auth

    probe.patch(auth, "api_key_authenticate", "authenticate the key")
    probe.patch(auth.ApiKeyRateThrottle, "allow_request", "rate limit")


def profile_line(profile: RequestProfile) -> str:
    top = sorted(profile.phases, key=lambda p: -p.seconds)[:5]
    return (
        f"metering profile, {profile.label}: {ms(profile.total)} per {profile.unit} in one "
        "process, "
        f"{profile.statements:.0f} SQL statements through Django ({ms(profile.sql)}); "
        + "; ".join(f"{p.name} {ms(p.seconds)}" for p in top)
    )


def profile_table(profiles: list[RequestProfile]) -> list[str]:
    """Each profile's intro and table of steps, for the docs."""
    lines = []
    for profile in profiles:
        lines += _profile_intro(profile)
        for phase in profile.phases:
            if phase.seconds >= 0.00005 or phase.statements:
                lines.append(
                    f"| {phase.name} | {ms(phase.seconds)} | {ms(phase.sql)} "
                    f"| {phase.statements:.1f} |"
                )
    return lines


def _profile_intro(profile: RequestProfile) -> list[str]:
    per = profile.statements_per or profile.unit
    return [
        "",
        f"Profile of `{profile.label}`: "
        + (
            profile.intro
            or f"{profile.requests} requests one after another in one process through "
            "Django's test client (the view, middleware and SQL that gunicorn runs; the "
            "timers cost a little)"
        )
        + f": {ms(profile.total)} per {profile.unit}, {profile.statements:.1f} SQL "
        f"statements per {per} through Django's cursors ({ms(profile.sql)} per {profile.unit}).",
        "",
        f"| step | time per {profile.unit} | of which SQL | statements per {per} |",
        "| --- | ---: | ---: | ---: |",
    ]
