"""Prometheus metrics of the service: the API serves its own at /metrics, a worker its
own on `TAESAR_WORKER_METRICS_PORT`.

Metrics live in the process-wide default registry (that is what prometheus-client
and its scrapers expect); the helpers below are the only writers, so the names and
label sets stay in one place. Label values are bounded: routes are path *templates*
(`/jobs/{job_id}`), never raw paths, and unmatched paths share one label.

The API writes the request, /regenerate, submission and cancellation metrics; a worker
writes the job-side ones: `source="job"` decisions and the jobs it finishes (succeeded
or failed) with their durations. Each job's end is observed once, by the process whose
job-store step made it final (`core.jobstore`).

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR so /metrics aggregates
every worker process instead of answering for whichever one took the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from models.tally import Tally

# Fine buckets at the low end: /regenerate of one sequence is a few milliseconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

REQUESTS = Counter("taesar_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "taesar_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
SEQUENCES = Counter("taesar_sequences_total", "Sequences regenerated", ["source", "model", "target"])
DECISIONS = Counter("taesar_decisions_total", "Per-item decisions", ["source", "model", "target", "action"])
DECODE_SECONDS = Histogram(
    "taesar_decode_duration_seconds",
    "Engine time of one /regenerate batch (one call, or several micro-batched)",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
MICROBATCH_CALLS = Histogram(
    "taesar_microbatch_calls",
    "/regenerate calls joined into one engine batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MICROBATCH_SEQUENCES = Histogram(
    "taesar_microbatch_sequences",
    "Sequences in one engine batch of /regenerate calls",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
DECODE_INFLIGHT = Gauge("taesar_decode_inflight", "/regenerate calls decoding or waiting for a decode thread")
QUEUE_DEPTH = Gauge("taesar_queue_depth", "Sequences queued for workers and not finished yet")
JOBS = Counter("taesar_jobs_total", "Job lifecycle events", ["event"])
JOB_DURATION = Histogram(
    "taesar_job_duration_seconds",
    "Wall time of a job from submission to its final state",
    ["status"],
    buckets=_JOB_BUCKETS,
)
MODELS_LOADED = Gauge("taesar_models_loaded", "Bundles loaded in this process")
MODEL_LOAD_ERRORS = Gauge("taesar_model_load_errors", "Bundles that failed to load in this process")

UNMATCHED_ROUTE = "<unmatched>"


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def observe_decisions(source: str, model: str, target: str, sequences: int, tally: Tally) -> None:
    """Count one batch of regenerated sequences; `source` is "sync" (/regenerate) or "job"."""
    SEQUENCES.labels(source, model, target).inc(sequences)
    for action, count in tally.by_action().items():
        DECISIONS.labels(source, model, target, action).inc(count)


def observe_decode(model: str, seconds: float) -> None:
    DECODE_SECONDS.labels(model).observe(seconds)


def observe_batch(model: str, calls: int, sequences: int) -> None:
    MICROBATCH_CALLS.labels(model).observe(calls)
    MICROBATCH_SEQUENCES.labels(model).observe(sequences)


def set_queue_depth(sequences: int) -> None:
    QUEUE_DEPTH.set(sequences)


def count_job(event: str) -> None:
    """A job event: submitted, deduplicated (idempotency hit), rejected, and the final
    states succeeded, failed, cancelled."""
    JOBS.labels(event).inc()


def observe_job_finished(status: str, seconds: float) -> None:
    """A job reached its final state (succeeded, failed, cancelled) `seconds` after its
    submission: called once per job, by whoever made the transition."""
    count_job(status)
    JOB_DURATION.labels(status).observe(seconds)


def set_models(loaded: int, failed: int) -> None:
    MODELS_LOADED.set(loaded)
    MODEL_LOAD_ERRORS.set(failed)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
