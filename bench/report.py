"""What a benchmark reports, and the one table every benchmark's results are printed in."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    """One number of one benchmark, beside the reference's number for the same thing if any."""

    suite: str
    name: str
    value: float
    unit: str
    reference: float | None = None
    target: str = ""

    @property
    def ratio(self) -> float | None:
        """ours / reference: below 1 means we are faster (for times)."""
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference


@dataclass(frozen=True)
class Summary:
    minimum: float
    median: float
    p95: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarise")
        ordered = sorted(samples)
        index_95 = min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))
        return cls(ordered[0], statistics.median(ordered), ordered[index_95])


def render_table(measurements: Iterable[Measurement]) -> str:
    header = ("suite", "measurement", "ours", "reference", "ratio", "target")
    rows = [header]
    for m in measurements:
        rows.append(
            (
                m.suite,
                m.name,
                f"{m.value:.2f} {m.unit}",
                "" if m.reference is None else f"{m.reference:.2f} {m.unit}",
                "" if m.ratio is None else f"{m.ratio:.2f}",
                m.target,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
