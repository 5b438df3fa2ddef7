"""Helpers of the SDK's unit tests: scripted httpx.MockTransport answers, recorded
requests, and clients whose retry sleeps are recorded instead of slept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from taesar_client import AsyncTaesarClient, TaesarClient

BASE = "http://taesar.test"
Handler = Callable[[httpx.Request], httpx.Response]


def job_json(status: str = "queued", done: int = 0, total: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "id": "j1",
        "status": status,
        "model": "tiny",
        "target_domain": "drama",
        "progress": {"done": done, "total": total},
        "decisions": {"kept": done, "replaced": 0, "discarded": 0},
        "created_at": "2026-01-01T00:00:00Z",
        "links": {"self": "/jobs/j1", "results": "/jobs/j1/results"},
        **extra,
    }


def regenerated_json(user: str = "u1") -> dict[str, Any]:
    return {
        "user_id": user,
        "target_domain": "drama",
        "sequence": ["a", "c"],
        "decisions": [
            {"position": 0, "item": "a", "domain": "drama", "action": "keep"},
            {"position": 1, "item": "b", "domain": "comedy", "action": "replace", "replacement": "c"},
        ],
        "stats": {"kept": 1, "replaced": 1, "discarded": 0},
    }


def error(status: int, code: str, message: str = "nope", headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": {"why": code}}}
    return httpx.Response(status, json=body, headers=headers)


class Recorder:
    """A MockTransport handler that replays scripted answers and records requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        self.bodies.append(request.read())
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(recorder: Recorder, **kwargs: Any) -> tuple[TaesarClient, list[float]]:
    client = TaesarClient(BASE, transport=httpx.MockTransport(recorder), **kwargs)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


def async_client_for(handler: Any, **kwargs: Any) -> tuple[AsyncTaesarClient, list[float]]:
    client = AsyncTaesarClient(BASE, transport=httpx.MockTransport(handler), **kwargs)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = sleep
    return client, sleeps
