"""What the server reports besides the answer: Prometheus metrics, the JSONL audit log of alerts,
webhook events and the recent-requests feed of the dashboard."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from persona_guard.server.policy import TraitVerdict

#: Buckets of the raw projection histograms (projections are in residual-stream units).
PROJECTION_BUCKETS = (-32, -16, -8, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 4, 8, 16, 32)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "persona_guard_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "persona_guard_request_duration_seconds", "Time to the full answer", ["route"], registry=self.registry
        )
        self.batch_rows = Histogram(
            "persona_guard_batch_rows",
            "Rows (choices) generated per batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.completion_tokens = Counter("persona_guard_completion_tokens", "Generated tokens", registry=self.registry)
        self.projection = Histogram(
            "persona_guard_trait_projection",
            "Projection on a persona vector",
            ["trait", "reading"],
            buckets=PROJECTION_BUCKETS,
            registry=self.registry,
        )
        self.alerts = Counter(
            "persona_guard_alerts",
            "Answers with a reading over its threshold",
            ["trait", "action"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "persona_guard_webhook_failures", "Alert events the webhook never took", registry=self.registry
        )

    def observe_verdicts(self, verdicts: dict[str, TraitVerdict]) -> None:
        for trait, verdict in verdicts.items():
            self.projection.labels(trait, "prompt_last").observe(verdict.prompt_last)
            if verdict.response_mean is not None:
                self.projection.labels(trait, "response_mean").observe(verdict.response_mean)
            if verdict.alert:
                self.alerts.labels(trait, verdict.action).inc()


class AuditLog:
    """Append one JSON line per alert event; each line is one ``write`` under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)  # its folder appears with the first event, not when a server starts
        self._lock = threading.Lock()

    def write(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)


class Webhook:
    """POST alert events as JSON in the background: ``timeout`` seconds per try, ``retries`` more
    tries on connection errors, 429 and 5xx with exponential backoff. Never awaited by a request."""

    def __init__(
        self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5, metrics: Metrics | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.metrics = metrics
        self._tasks: set[asyncio.Task] = set()

    def send(self, event: dict) -> None:
        task = asyncio.get_running_loop().create_task(self._post(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, event: dict) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in range(self.retries + 1):
                try:
                    response = await client.post(self.url, json=event)
                    if response.status_code < 500 and response.status_code != 429:
                        return
                except httpx.HTTPError:
                    pass
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff * 2**attempt)
        if self.metrics is not None:
            self.metrics.webhook_failures.inc()


@dataclass
class Feed:
    """The dashboard's data: the last ``size`` answers and alerts, newest last."""

    size: int = 200
    requests: deque = field(default_factory=deque)
    alerts: deque = field(default_factory=deque)
    total: int = 0

    def add(self, record: dict) -> None:
        self.total += 1
        self.requests.append(record)
        while len(self.requests) > self.size:
            self.requests.popleft()
        for trait, reading in record["traits"].items():
            if reading["alert"]:
                self.alerts.append(
                    {
                        "time": record["time"],
                        "id": record["id"],
                        "trait": trait,
                        "action": reading["action"],
                        "reasons": reading["reasons"],
                    }
                )
        while len(self.alerts) > self.size:
            self.alerts.popleft()

    def to_dict(self) -> dict:
        return {"now": time.time(), "total": self.total, "requests": list(self.requests), "alerts": list(self.alerts)}
