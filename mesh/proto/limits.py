"""Rate limiting for the signaling server: a token bucket per connection and a
connection counter per client address. Sans-I/O: time is an argument."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class ConnectionCounter:
    """Counts open connections per client address, refusing above ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, addr: str) -> bool:
        if self.at_limit(addr):
            return False
        self._open[addr] += 1
        return True

    def at_limit(self, addr: str) -> bool:
        """Whether ``acquire(addr)`` would refuse now."""
        return self._open[addr] >= self.limit

    def release(self, addr: str) -> None:
        self._open[addr] -= 1
        if self._open[addr] <= 0:
            del self._open[addr]

    def total(self) -> int:
        return sum(self._open.values())
