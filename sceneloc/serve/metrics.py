"""The service's Prometheus series (prometheus_client), in a registry of their own per application, so that two
applications in one process (the tests) count apart. Served as text at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets of request and localization times, seconds (tens of milliseconds per image on a CPU)."""


disable_created_metrics()  # the *_created series double the text and say only when the process started


class ServiceMetrics:
    """Every series the service exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool_depth, pool_running):
        """pool_depth, pool_running: callables giving the localization queue's depth and running jobs now."""
        self.registry = CollectorRegistry()
        self.requests = Counter("sceneloc_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.request_seconds = Histogram("sceneloc_request_seconds", "HTTP request time, first byte to reply",
                                         ["route"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.localizations = Counter("sceneloc_localizations", "Images localized, by map, source and outcome",
                                     ["map", "source", "outcome"], registry=self.registry)
        self.localize_seconds = Histogram("sceneloc_localize_seconds", "Time of one image in the localize loop "
                                          "(resize, network, RANSAC; the upload's decoding aside)", ["map"],
                                          buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.queue_seconds = Histogram("sceneloc_queue_seconds", "Time of an admitted image outside the "
                                       "localize loop: waiting for a thread, decoding the upload",
                                       buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.rejects = Counter("sceneloc_rejects", "Requests and frames refused, by reason",
                               ["reason"], registry=self.registry)
        self.stream_frames = Counter("sceneloc_stream_frames", "Stream frames received, localized and dropped",
                                     ["outcome"], registry=self.registry)
        self.queue_depth = Gauge("sceneloc_queue_depth", "Images admitted and waiting for a localization thread",
                                 registry=self.registry)
        self.queue_depth.set_function(pool_depth)
        self.running = Gauge("sceneloc_running", "Images being localized now", registry=self.registry)
        self.running.set_function(pool_running)
        self.streams = Gauge("sceneloc_streams", "Open stream and viewer WebSockets", ["kind"],
                             registry=self.registry)

    def text(self) -> bytes:
        """The exposition text of every series."""
        return generate_latest(self.registry)
