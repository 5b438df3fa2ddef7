"""Key names of a job in Redis and the records read from them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import metrics
from core.jobstore.chunks import ChunkInput
from models.tally import Tally

# errors that mean "Redis is unreachable right now", as opposed to a bug: callers turn
# them into 503 + Retry-After (API) or a bounded retry (workers)
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

STAGING = "staging"  # internal: upload in progress; readers see 404
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ResultFormat = Literal["jsonl", "recbole"]


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKeys:
    prefix: str
    job_id: str

    @property
    def meta(self) -> str:
        return f"{self.prefix}:job:{self.job_id}"

    def input(self, i: int) -> str:
        return f"{self.meta}:in:{i}"

    def output(self, i: int) -> str:
        return f"{self.meta}:out:{i}"

    def recbole(self, i: int) -> str:
        return f"{self.meta}:rb:{i}"

    @property
    def tries(self) -> str:
        return f"{self.meta}:tries"


def job_key_prefix(prefix: str) -> str:
    return f"{prefix}:job:"


def pending_key(prefix: str) -> str:
    return f"{prefix}:pending"


def idempotency_key(prefix: str, owner: str, key: str) -> str:
    # hashed: a client's header value can be long or odd, and must not reach key names
    digest = hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()
    return f"{prefix}:idem:{digest}"


# -- job records -----------------------------------------------------------------------


@dataclass
class JobSpec:
    """What a job decodes: everything the worker needs besides the sequences."""

    owner: str
    model: str
    target_domain: str
    options: dict[str, Any]


@dataclass
class JobRecord:
    id: str
    owner: str
    status: str
    model: str
    target_domain: str
    options: dict[str, Any]
    total: int
    n_chunks: int
    chunks_done: int
    done: int
    decisions: Tally
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: int
    error: dict[str, Any] | None = None
    request_digest: str = ""  # of what the submission asked for (app.uploads.RequestDigest)

    @classmethod
    def from_hash(cls, job_id: str, h: dict[bytes, bytes]) -> JobRecord:
        s = {k.decode(): v.decode() for k, v in h.items()}

        def num(name: str) -> int:
            return int(s.get(name) or 0)

        def when(name: str) -> float | None:
            return float(s[name]) if s.get(name) else None

        return cls(
            id=job_id,
            owner=s["owner"],
            status=s["status"],
            model=s["model"],
            target_domain=s["target_domain"],
            options=json.loads(s.get("options") or "{}"),
            total=num("total"),
            n_chunks=num("n_chunks"),
            chunks_done=num("chunks_done"),
            done=num("done"),
            decisions=Tally(kept=num("kept"), replaced=num("replaced"), discarded=num("discarded")),
            created_at=float(s["created_at"]),
            started_at=when("started_at"),
            finished_at=when("finished_at"),
            expires_at=num("expires_at"),
            error=json.loads(s["error"]) if s.get("error") else None,
            request_digest=s.get("request_digest", ""),
        )


@dataclass
class CommitResult:
    accepted: bool
    pending: int  # sequences pending across all jobs (before this one, when refused)


@dataclass
class ChunkWork:
    job_id: str
    index: int
    model: str
    target_domain: str
    options: dict[str, Any]
    chunk: ChunkInput
    delivery: int  # 1 on the first delivery of this chunk


@dataclass
class ChunkSkip:
    """Why a delivered chunk needs no work: the job is gone or final, the chunk is done,
    or it was delivered too often (poison)."""

    reason: str
    deliveries: int = 0


def script_outcome(got: list[bytes], now: float) -> str:
    """The outcome a COMPLETE or FINISH script returned. The one call that made the job
    final also gets its creation time back, and observes the job's duration: so every
    job is counted once, by the process that ended it."""
    outcome = got[0].decode()
    if len(got) > 1:
        metrics.observe_job_finished(outcome, max(0.0, now - float(got[1])))
    return outcome
