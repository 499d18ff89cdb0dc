"""Counters of one chat worker, shown by `/stats` and (as Prometheus metrics) `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerMetrics:
    in_flight: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    requeued: int = 0
    duplicates_skipped: int = 0
    regenerated: int = 0
    model_retries: int = 0
    superseded: int = 0
