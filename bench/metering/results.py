"""What a run measured, figure by figure, and its one-line verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from bench import env
from bench.metering import auth, compat, e2e, ingest, lag, memory
from bench.metering.auth import AuthRound, Exhaustion, Layout
from bench.metering.compat import Compat
from bench.metering.db_paths import DbPath
from bench.metering.e2e import Figure as EndToEndFigure
from bench.metering.ingest import Level
from bench.metering.lag import BalanceCost, LagRun
from bench.metering.memory import Memory
from bench.metering.profiling import RequestProfile
from bench.metering.rating import Drain
from bench.metering.stack import Broker
from bench.stats import median


@dataclass
class Results:
    machine: env.Machine
    broker: Broker
    problems: list[str]
    levels: list[Level] = field(default_factory=list)
    ingest_profile: RequestProfile | None = None
    paths: list[DbPath] = field(default_factory=list)
    compat: Compat | None = None
    drain: Drain | None = None
    lags: list[LagRun] = field(default_factory=list)
    lags_high: list[LagRun] = field(default_factory=list)  # at --lag-high-rate
    balance: BalanceCost | None = None
    balance_latencies: list[float] = field(default_factory=list)
    rounds: list[AuthRound] = field(default_factory=list)
    auth_profiles: list[RequestProfile] = field(default_factory=list)
    exhaustion: Exhaustion | None = None
    layouts: list[Layout] = field(default_factory=list)  # authorizations per gunicorn layout
    loads: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    memory: list[Memory] = field(default_factory=list)
    e2e: EndToEndFigure | None = None

    @property
    def lag_p99(self) -> float:
        return median([r.p(99) for r in self.lags])

    @property
    def lag_high_p99(self) -> float:
        return median([r.p(99) for r in self.lags_high])

    @property
    def auth_ratio(self) -> float:
        return median([r.ratio for r in self.rounds])

    @property
    def overdraw(self) -> Decimal:
        total = sum((r.overdraw for r in self.rounds), Decimal(0))
        total += sum((layout.overdraw for layout in self.layouts), Decimal(0))
        return total + (self.exhaustion.overdraw if self.exhaustion else Decimal(0))


def verdict_line(res: Results) -> str:
    parts = []
    if res.levels:
        parts.append(ingest.verdict(res))
    if res.compat:
        parts.append(compat.verdict(res))
    if res.lags:
        parts.append(lag.verdict(res))
    if res.lags_high:
        parts.append(lag.verdict_high(res))
    if res.rounds:
        parts.append(auth.verdict(res))
    if backlog := memory.backlog(res.memory):
        parts.append(memory.verdict(backlog))
    if res.e2e:
        parts.append(e2e.verdict(res))
    return "metering verdict: " + "; ".join(parts) + f"; {len(res.problems)} correctness problems"
