"""Prometheus metrics for decisions and the audit pipeline, in a registry of their own (the
agent serves it on /metrics; tests create as many as they like)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AuditMetrics:
    """Counters and histograms: decisions by verdict and reason, events written, write
    latency (one observation per group commit) and the writer's queue depth."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "cport_decisions",
            "Decisions by verdict and reason.",
            ["verdict", "reason"],
            registry=self.registry,
        )
        self.events_written = Counter(
            "cport_audit_events_written",
            "Audit events committed to the store.",
            registry=self.registry,
        )
        self.write_errors = Counter(
            "cport_audit_write_errors", "Group commits that failed.", registry=self.registry
        )
        self.write_seconds = Histogram(
            "cport_audit_write_seconds",
            "Time to commit one batch of audit events.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cport_audit_batch_size",
            "Events per group commit.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "cport_audit_queue_depth",
            "Audit events waiting to be committed.",
            registry=self.registry,
        )
