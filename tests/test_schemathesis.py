"""Schemathesis over the whole OpenAPI schema, in-process (ASGI), against the real Redis.

Every operation gets schema-conforming (positive) and schema-violating (negative) cases;
every answer must be a non-5xx whose status, content type, headers and body are the ones
the schema documents. Derandomized, so CI replays the same cases every run.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.api_support import delete_prefix, model_dir_with, settings_for

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# examples per (operation, mode); operations without parameters run out of distinct cases
# after a few, the others take their full share. The test asserts the total it really ran.
EXAMPLES = {"POST /regenerate": 125, "POST /jobs": 125}
DEFAULT_EXAMPLES = 40
MIN_CASES = 1000


@pytest.fixture(scope="module")
def schema(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    prefix = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    settings = settings_for(
        model_dir_with(tiny_bundle, tmp_path_factory.mktemp("fuzz")),
        key_prefix=prefix,
        api_keys=[KEY],
        # small limits, so that generated bodies also reach the 413 paths
        max_sequences_per_request=20,
        max_items_per_sequence=50,
        max_body_bytes=64 * 1024,
        max_pending_sequences=5000,
        job_ttl_s=600,
    )
    app = create_app(settings)
    # schemathesis runs the app's lifespan (models, Redis client) on its own event loop
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    schemathesis_asgi.shutdown_lifespans()
    delete_prefix(prefix)


def test_fuzzing_the_whole_schema_finds_no_5xx_and_no_undocumented_answer(schema: Any, catalogue: dict) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /regenerate",
        "POST /jobs",
        "GET /jobs/{job_id}",
        "GET /jobs/{job_id}/results",
        "DELETE /jobs/{job_id}",
        "GET /models",
        "GET /readyz",
    }
    job_id = _a_real_job(schema, catalogue)
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    for op in operations:
        for name, strategy in _strategies(op, catalogue, job_id):
            try:
                fuzz(op, strategy, statuses)
            except Unsatisfiable:
                # no parameter or body to break: an operation without inputs has no negative cases
                assert name == "negative", op.label
    cases = sum(statuses.values())
    server_errors = sum(n for (_, status), n in statuses.items() if status >= 500)
    print(f"schemathesis: {cases} cases, {server_errors} 5xx; statuses: {sorted(statuses.items())}")
    assert server_errors == 0
    assert cases >= MIN_CASES
    # the happy paths were reached too, not only the error answers
    assert statuses[("POST /regenerate", 200)] and statuses[("POST /jobs", 202)]
    assert statuses[("GET /jobs/{job_id}", 200)]


def fuzz(op: Any, strategy: Any, statuses: collections.Counter[tuple[str, int]]) -> None:
    """Call and check every case of `strategy`; count the answers by (operation, status)."""

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES.get(op.label, DEFAULT_EXAMPLES),
        derandomize=True,  # the same cases on every run and machine
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers=AUTH)
        statuses[(op.label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS, headers=AUTH)

    run()


def _strategies(op: Any, catalogue: dict[str, Any], job_id: str) -> Iterator[tuple[str, Any]]:
    """Schema-conforming and schema-violating cases; plus, where random strings could never
    hit a real domain, item or job, positive cases steered onto the catalogue and a real job."""
    yield "positive", op.as_strategy(generation_mode=GenerationMode.POSITIVE)
    yield "negative", op.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    if op.label in ("POST /regenerate", "POST /jobs"):
        strategy = op.as_strategy(generation_mode=GenerationMode.POSITIVE)
        yield "catalogue", strategy.map(lambda case: _onto_catalogue(case, catalogue))
    if "{job_id}" in op.path:
        yield "real job", op.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters={"job_id": job_id})


def _onto_catalogue(case: Any, catalogue: dict[str, Any]) -> Any:
    """Keep the generated shape (lengths, options, user ids) but use a real domain and items."""
    items, domains = catalogue["item_ids"], catalogue["domains"]
    if isinstance(case.body, dict):
        body = dict(case.body)
        body["target_domain"] = domains[len(str(body.get("target_domain", ""))) % len(domains)]
        body.pop("model", None)
        body["sequences"] = [
            {**s, "items": [items[(k * 7 + j) % len(items)] for j in range(len(s.get("items", [])))]}
            for k, s in enumerate(body.get("sequences", []))
        ]
        case.body = body
    elif case.query is not None or case.media_type == "application/x-ndjson":
        case.query = {**(case.query or {}), "target_domain": domains[0]}
        case.query.pop("model", None)
    return case


def _a_real_job(schema: Any, catalogue: dict[str, Any]) -> str:
    """A queued job of the fuzz caller (no worker runs: it stays queued)."""
    op = next(r.ok() for r in schema.get_all_operations() if r.ok().label == "POST /jobs")
    body = {"target_domain": catalogue["domains"][0], "sequences": [{"items": catalogue["item_ids"][:3]}]}
    case = op.Case(body=body, media_type="application/json")
    response = case.call(headers=AUTH)
    assert response.status_code == 202, response.text
    return response.json()["id"]
