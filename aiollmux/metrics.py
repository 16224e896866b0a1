"""Prometheus metrics under llmux's names (docs/design.md §10), on a registry per app."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST

# llmux exports no `*_created` series, and dashboards written for it expect none: they
# would double every counter and histogram in a `{__name__=~"llmux_.*"}` query.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Switches and hooks take seconds to minutes; requests milliseconds to many minutes.
_SWITCH_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class Metrics:
    """Every metric aiollmux exports, registered on its own `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._switch_metrics(self.registry)
        self._request_metrics(self.registry)
        self._hook_metrics(self.registry)
        self._state_metrics(self.registry)
        # Labelled children used on every request, looked up once (labels() is not free).
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._in_flight_children: dict[str, Any] = {}

    def _switch_metrics(self, r: CollectorRegistry) -> None:
        self.switch_total = Counter(
            "llmux_switch_total", "Model switches by outcome.", ["from", "to", "result"], registry=r
        )
        self.switch_duration = Histogram(
            "llmux_switch_duration_seconds",
            "GPU time of a switch: sleep hooks + free-memory wait + wake hook (no drain).",
            ["from", "to"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.switch_drain_duration = Histogram(
            "llmux_switch_drain_duration_seconds",
            "Time spent waiting for the old model's in-flight requests.",
            ["from", "to"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.model_active_duration = Histogram(
            "llmux_model_active_duration_seconds",
            "How long a model stayed active.",
            ["model"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.switch_cost_ema = Gauge(
            "llmux_switch_cost_ema_seconds",
            "Exponential moving average of switch cost.",
            ["from", "to"],
            registry=r,
        )

    def _request_metrics(self, r: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "llmux_request_queue_depth", "Requests waiting for a model.", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            "llmux_request_queue_wait_seconds",
            "Time requests waited for their model.",
            ["model"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llmux_model_in_flight", "Requests being served by a model.", ["model"], registry=r
        )
        self.requests_total = Counter(
            "llmux_requests_total", "Requests by model and status.", ["model", "status"], registry=r
        )
        self.request_duration = Histogram(
            "llmux_request_duration_seconds",
            "Request time including queueing and streaming.",
            ["model", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )

    def _hook_metrics(self, r: CollectorRegistry) -> None:
        self.hook_duration = Histogram(
            "llmux_hook_duration_seconds",
            "Hook run time.",
            ["model", "hook"],
            buckets=_SWITCH_BUCKETS,
            registry=r,
        )
        self.hook_failures = Counter(
            "llmux_hook_failures_total", "Hook runs that failed.", ["model", "hook"], registry=r
        )
        self.hook_timeouts = Counter(
            "llmux_hook_timeouts_total",
            "Hook runs killed at their timeout.",
            ["model", "hook"],
            registry=r,
        )

    def _state_metrics(self, r: CollectorRegistry) -> None:
        """What is awake, group memory, reloads."""
        self.active_model = Gauge(
            "llmux_active_model", "1 for every awake model, 0 otherwise.", ["model"], registry=r
        )
        self.group_memory_budget = Gauge(
            "llmux_group_memory_budget_gb",
            "A GPU group's memory budget (groups with memory_gb only).",
            ["group"],
            registry=r,
        )
        self.group_memory_used = Gauge(
            "llmux_group_memory_used_gb",
            "GPU memory a group's awake (and waking) members occupy (groups with memory_gb).",
            ["group"],
            registry=r,
        )
        self.config_reloads = Counter(
            "llmux_config_reloads_total",
            "Configuration reloads by outcome.",
            ["result"],
            registry=r,
        )

    def request_finished(self, model: str, status: str, seconds: float) -> None:
        children = self._request_children.get((model, status))
        if children is None:
            children = (
                self.requests_total.labels(model=model, status=status),
                self.request_duration.labels(model=model, status=status),
            )
            self._request_children[(model, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def in_flight_of(self, model: str) -> Any:
        child = self._in_flight_children.get(model)
        if child is None:
            child = self._in_flight_children[model] = self.in_flight.labels(model=model)
        return child

    def forget_model(self, model: str) -> None:
        """A model left the configuration: its gauges go (a removed model is neither
        active nor busy: it is not there). Counters and histograms keep their history."""
        self._in_flight_children.pop(model, None)
        for gauge in (self.active_model, self.in_flight, self.queue_depth):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(model)

    def group_memory(self, group: str, budget: float | None, used: float | None) -> None:
        """Export a budget group's memory; a group without a budget has no such series."""
        if budget is None:
            for gauge in (self.group_memory_budget, self.group_memory_used):
                with contextlib.suppress(KeyError):  # never set
                    gauge.remove(group)
            return
        self.group_memory_budget.labels(group=group).set(budget)
        self.group_memory_used.labels(group=group).set(used or 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
