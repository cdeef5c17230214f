"""Prometheus metrics (`GET /metrics`): requests, tokens, queue length, time to first token, and
with --parallel the batch's steps and where their time went (engine pass vs the server's own).

Each app has its own registry, so several servers in one process (the tests) count apart.
"""
from __future__ import annotations

import time


class ServerMetrics:
    def __init__(self, queue_length, batch_stats=None):
        """queue_length: () -> requests running or waiting (the worker's count); batch_stats:
        () -> BatchWorker.stats(), or None without a batch."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("forgert_requests", "Requests answered (completions, embeddings), by route and status",
                                ["route", "status"], registry=self.registry)
        self.prompt_tokens = Counter("forgert_prompt_tokens", "Prompt tokens of finished choices",
                                     registry=self.registry)
        self.generation_tokens = Counter("forgert_generation_tokens", "Tokens generated", registry=self.registry)
        self.embedding_tokens = Counter("forgert_embedding_tokens", "Input tokens embedded (/v1/embeddings)",
                                        registry=self.registry)
        self.queue = Gauge("forgert_requests_in_flight", "Requests running or waiting for the model",
                           registry=self.registry)
        self.queue.set_function(queue_length)
        self.ttft = Histogram("forgert_time_to_first_token_seconds",
                              "From the request's arrival to its first generated text",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                              registry=self.registry)
        if batch_stats is not None:
            self.registry.register(_BatchCollector(batch_stats))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BatchCollector:
    """The batch worker's counters, read when /metrics is scraped."""

    FAMILIES = (("steps", "forgert_batch_steps", "Engine steps run by the batch"),
                ("sampled_rows", "forgert_batch_sampled_tokens", "Tokens sampled by the batch's steps"),
                ("pass_seconds", "forgert_batch_engine_seconds",
                 "Seconds in the batch's engine passes (with the sampling of rows that need logits in Python)"),
                ("busy_seconds", "forgert_batch_busy_seconds",
                 "Seconds the batch thread was at work: the engine passes plus the server's own "
                 "scheduling, detokenization and hand-offs"))

    def __init__(self, stats):
        self.stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily
        values = self.stats()
        for key, name, doc in self.FAMILIES:
            yield CounterMetricFamily(name, doc, value=values[key])


class RequestTimer:
    """Time to first token of one request: observe() once, at its first piece of text."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.start = time.monotonic()
        self.seen = False

    def first_text(self) -> None:
        if not self.seen:
            self.seen = True
            self.metrics.ttft.observe(time.monotonic() - self.start)
