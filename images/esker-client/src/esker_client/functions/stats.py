"""Per-version counters for the hub's metrics: Prometheus-style cumulative latency buckets in seconds."""

from __future__ import annotations

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _label(b: float) -> str:
    return f"{b:g}"


class VersionStats:
    def __init__(self):
        self.calls = self.errors = self.timeouts = self.in_flight = 0
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative); the last is +Inf
        self.latency_sum = 0.0

    def observe(self, seconds: float, status: int) -> None:
        """One finished call. `errors` counts every call not answered 200 (timeouts included)."""
        self.calls += 1
        if status != 200:
            self.errors += 1
        if status == 504:
            self.timeouts += 1
        self.latency_sum += seconds
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1

    def as_json(self) -> dict:
        buckets, total = {}, 0
        for b, n in zip([*map(_label, BUCKETS), "+Inf"], self.counts):
            total += n
            buckets[b] = total
        return {"calls": self.calls, "errors": self.errors, "timeouts": self.timeouts, "in_flight": self.in_flight,
                "latency_buckets": buckets, "latency_sum": round(self.latency_sum, 6)}
