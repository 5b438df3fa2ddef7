"""The HTTP API on the tiny bundle: /regenerate, /models, health, metrics, auth, CORS.

Real HTTP through httpx's ASGI transport, with the app's lifespan (bundle loading,
Redis client) running as in production. Error paths are in test_api_errors.py.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from app.cli import app as cli
from app.deps import caller_id, key_matches
from core.schemas import ErrorResponse, ModelList, RegenerateResponse
from tests.api_support import api_client, closed_port_url, model_dir_with, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sequences(catalogue: dict[str, Any]) -> list[list[str]]:
    """Mixed sequences over every domain, some longer than the bundle's max_len of 16."""
    rng = random.Random(3)
    items = catalogue["item_ids"]
    return [[rng.choice(items) for _ in range(n)] for n in (1, 2, 5, 16, 17, 50)]


@pytest.fixture
def model_dir(tiny_bundle: Path, tmp_path: Path) -> Path:
    return model_dir_with(tiny_bundle, tmp_path)


def body(target: str, sequences: list[list[str]], **options: Any) -> dict[str, Any]:
    return {
        "target_domain": target,
        "sequences": [{"user_id": f"u{k}", "items": s} for k, s in enumerate(sequences)],
        "options": options,
    }


# -- /regenerate ------------------------------------------------------------------------


async def test_regenerate_equals_the_cli_output_for_the_same_sequences(
    model_dir: Path, tiny_bundle: Path, catalogue: dict, sequences: list[list[str]], tmp_path: Path
) -> None:
    target = catalogue["domains"][1]
    request = body(target, sequences)
    async with api_client(settings_for(model_dir)) as client:
        r = await client.post("/regenerate", json=request)
    assert r.status_code == 200, r.text
    answer = r.json()

    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(json.dumps(s) + "\n" for s in request["sequences"]))
    out = tmp_path / "out.jsonl"
    run = CliRunner().invoke(
        cli,
        [
            "regenerate",
            "--bundle",
            str(tiny_bundle),
            "--target",
            target,
            "--input",
            str(lines),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert run.exit_code == 0, run.output
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    assert answer["results"] == expected
    assert answer["model"] == "tiny" and answer["target_domain"] == target
    assert answer["stats"] == {k: sum(x["stats"][k] for x in expected) for k in ("kept", "replaced", "discarded")}
    RegenerateResponse.model_validate(answer)


async def test_regenerate_equals_the_engine_and_output_functions_the_cli_uses(
    model_dir: Path, tiny_bundle: Path, catalogue: dict, sequences: list[list[str]]
) -> None:
    from models.bundle import load_bundle
    from models.decoding import DecodeOptions, Regenerator, regenerate_external
    from models.output import to_output_line

    target = catalogue["domains"][2]
    b = load_bundle(tiny_bundle, device="cpu")
    engine = Regenerator(b.catalogue, b.mixed, b.experts, device="cpu")
    options = DecodeOptions(explain_top_k=2)
    expected = [
        to_output_line(r, b.catalogue, target, f"u{k}")
        for k, r in enumerate(regenerate_external(engine, sequences, target, options=options))
    ]
    async with api_client(settings_for(model_dir)) as client:
        r = await client.post("/regenerate", json=body(target, sequences, explain=True, explain_top_k=2))
    assert r.status_code == 200, r.text
    assert r.json()["results"] == json.loads(json.dumps(expected))
    RegenerateResponse.model_validate(r.json())


async def test_regenerate_decides_every_item_and_keeps_only_target_items(
    model_dir: Path, catalogue: dict, sequences: list[list[str]]
) -> None:
    target = catalogue["domains"][0]
    start, end = catalogue["offsets"][0], catalogue["offsets"][1]
    target_items = set(catalogue["item_ids"][start:end])
    async with api_client(settings_for(model_dir)) as client:
        r = await client.post("/regenerate", json=body(target, sequences))
    for seq, result in zip(sequences, r.json()["results"], strict=True):
        assert [d["position"] for d in result["decisions"]] == list(range(len(seq)))
        assert [d["item"] for d in result["decisions"]] == seq
        assert set(result["sequence"]) <= target_items
        assert sum(result["stats"].values()) == len(seq)


async def test_model_may_be_named_or_omitted_when_one_is_loaded(model_dir: Path, catalogue: dict) -> None:
    request = body(catalogue["domains"][0], [catalogue["item_ids"][:4]])
    async with api_client(settings_for(model_dir)) as client:
        implicit = await client.post("/regenerate", json=request)
        named = await client.post("/regenerate", json={**request, "model": "tiny"})
    assert implicit.status_code == named.status_code == 200
    assert implicit.json() == named.json()


async def test_model_is_required_when_several_are_loaded(tiny_bundle: Path, tmp_path: Path, catalogue: dict) -> None:
    folder = model_dir_with(tiny_bundle, tmp_path, "a")
    shutil.copytree(tiny_bundle, folder / "b")
    request = body(catalogue["domains"][0], [catalogue["item_ids"][:4]])
    async with api_client(settings_for(folder)) as client:
        missing = await client.post("/regenerate", json=request)
        named = await client.post("/regenerate", json={**request, "model": "b"})
        listed = await client.get("/models")
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "validation_error"
    assert missing.json()["error"]["details"]["models"] == ["a", "b"]
    assert named.status_code == 200 and named.json()["model"] == "b"
    assert [m["name"] for m in listed.json()["models"]] == ["a", "b"]


async def test_explain_adds_top_global_and_local_candidates_with_external_ids(
    model_dir: Path, catalogue: dict, sequences: list[list[str]]
) -> None:
    target = catalogue["domains"][2]
    known = set(catalogue["item_ids"])
    async with api_client(settings_for(model_dir)) as client:
        plain = await client.post("/regenerate", json=body(target, sequences))
        r = await client.post("/regenerate", json=body(target, sequences, explain=True, explain_top_k=3))
    assert r.status_code == 200, r.text
    decisions = [d for res in r.json()["results"] for d in res["decisions"]]
    replaced = [d for d in decisions if d["action"] == "replace"]
    assert replaced, "the fixture sequences should produce at least one replacement"
    for d in replaced:
        top_g, top_l = d["explain"]["global"], d["explain"]["local"]
        assert 1 <= len(top_g) <= 3 and 1 <= len(top_l) <= 3
        assert {item for item, _ in top_g + top_l} <= known
        assert all(isinstance(score, float) for _, score in top_g + top_l)
        assert [s for _, s in top_l] == sorted((s for _, s in top_l), reverse=True)
        assert top_l[0][0] == d["replacement"]
    assert all("explain" not in d for d in decisions if d["action"] == "keep")
    # explaining never changes a decision
    strip = [{k: v for k, v in d.items() if k != "explain"} for d in decisions]
    assert strip == [d for res in plain.json()["results"] for d in res["decisions"]]


async def test_unknown_items_dropped_are_discarded_with_reason(model_dir: Path, catalogue: dict) -> None:
    items = catalogue["item_ids"]
    seq = [items[0], "no-such-item", items[-1], 987654321]
    async with api_client(settings_for(model_dir)) as client:
        r = await client.post("/regenerate", json=body(catalogue["domains"][0], [seq], unknown_items="drop"))
    assert r.status_code == 200, r.text
    decisions = r.json()["results"][0]["decisions"]
    assert [d["item"] for d in decisions] == [items[0], "no-such-item", items[-1], "987654321"]
    for d in (decisions[1], decisions[3]):
        assert d["action"] == "discard" and d["reason"] == "unknown_item" and d["domain"] is None


async def test_ablations_are_accepted_and_change_nothing_for_target_items(model_dir: Path, catalogue: dict) -> None:
    target = catalogue["domains"][0]
    seq = catalogue["item_ids"][: catalogue["offsets"][1]][:6]  # target items only: all kept
    async with api_client(settings_for(model_dir)) as client:
        for ablation in ("no_adaptation", "no_source_experts", "no_global", "no_local"):
            r = await client.post("/regenerate", json=body(target, [seq], ablations={ablation: True}))
            assert r.status_code == 200, (ablation, r.text)
            assert r.json()["results"][0]["stats"]["kept"] == len(seq)


async def test_decoding_runs_off_the_event_loop(model_dir: Path, catalogue: dict, monkeypatch) -> None:
    from core.engines import Engine

    real = Engine.regenerate

    def slow(self: Engine, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # blocks its thread; it must not block /healthz
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "regenerate", slow)
    request = body(catalogue["domains"][0], [catalogue["item_ids"][:3]])
    answers: list[int] = []

    async def regenerate(client: httpx.AsyncClient) -> None:
        answers.append((await client.post("/regenerate", json=request)).status_code)

    async with api_client(settings_for(model_dir)) as client, anyio.create_task_group() as tg:
        tg.start_soon(regenerate, client)
        await anyio.sleep(0.05)
        started = time.perf_counter()
        health = await client.get("/healthz")
        waited = time.perf_counter() - started
    assert health.status_code == 200 and waited < 0.25
    assert answers == [200]


async def test_requests_that_decode_nothing_need_no_worker_thread(model_dir: Path) -> None:
    """Authentication, settings, Redis and job-store dependencies run on the event loop: with
    every worker thread busy (here the only one), /models and /jobs still answer at once."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    tokens, limiter.total_tokens = limiter.total_tokens, 1
    release = threading.Event()
    headers = {"X-API-Key": "k-one"}
    try:
        async with api_client(settings_for(model_dir, api_keys=["k-one"])) as client, anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, release.wait)
            try:
                while limiter.borrowed_tokens < 1:
                    await anyio.sleep(0.01)
                with anyio.fail_after(10):  # a dependency needing a thread would wait for release
                    models = await client.get("/models", headers=headers)
                    job = await client.get("/jobs/no-such-job", headers=headers)
            finally:
                release.set()  # the busy thread ends, so a timeout fails the test instead of hanging it
    finally:
        limiter.total_tokens = tokens
    assert models.status_code == 200 and job.status_code == 404


# -- /models, health, metrics -------------------------------------------------------------


async def test_models_lists_domains_sizes_hyper_parameters_and_metrics(model_dir: Path, catalogue: dict) -> None:
    async with api_client(settings_for(model_dir)) as client:
        r = await client.get("/models")
    assert r.status_code == 200
    listing = ModelList.model_validate(r.json())
    (m,) = listing.models
    assert m.name == "tiny" and m.n_items == len(catalogue["item_ids"])
    assert [d.name for d in m.domains] == catalogue["domains"]
    assert sum(d.n_items for d in m.domains) == m.n_items
    assert m.hyper_parameters["max_len"] == 16
    assert m.metrics and listing.errors == []


async def test_a_corrupt_bundle_is_reported_without_stopping_the_others(
    tiny_bundle: Path, tmp_path: Path, catalogue: dict
) -> None:
    folder = model_dir_with(tiny_bundle, tmp_path, "good")
    shutil.copytree(tiny_bundle, folder / "broken")
    weights = folder / "broken" / "mixed.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    async with api_client(settings_for(folder)) as client:
        listed = (await client.get("/models")).json()
        ready = await client.get("/readyz")
        broken = await client.post(
            "/regenerate", json={**body(catalogue["domains"][0], [catalogue["item_ids"][:2]]), "model": "broken"}
        )
    assert [m["name"] for m in listed["models"]] == ["good"]
    assert listed["errors"][0]["model"] == "broken" and listed["errors"][0]["code"] == "bad_bundle"
    assert "checksum" in listed["errors"][0]["message"]
    assert ready.status_code == 200
    assert [(e["model"], e["code"]) for e in ready.json()["errors"]] == [("broken", "bad_bundle")]
    assert broken.status_code == 503 and broken.json()["error"]["code"] == "model_not_ready"


async def test_healthz_answers_ok(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir)) as client:
        r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_is_ready_with_models_and_redis(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir)) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready" and r.json()["models"] == ["tiny"] and r.json()["redis"] is True


async def test_readyz_answers_503_quickly_when_redis_is_down(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir, redis_url=closed_port_url())) as client:
        started = time.perf_counter()
        with anyio.fail_after(5):
            r = await client.get("/readyz")
        assert time.perf_counter() - started < 2
        # /regenerate needs no Redis
        assert (await client.get("/healthz")).status_code == 200
    assert r.status_code == 503
    error = ErrorResponse.model_validate(r.json()).error
    assert error.code == "redis_unavailable" and error.details["redis"] is False
    assert r.headers["retry-after"]


async def test_without_models_readyz_and_regenerate_answer_503(tmp_path: Path) -> None:
    async with api_client(settings_for(tmp_path / "empty")) as client:
        ready = await client.get("/readyz")
        regen = await client.post("/regenerate", json={"target_domain": "x", "sequences": [{"items": ["1"]}]})
        listed = await client.get("/models")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_not_ready"
    assert regen.status_code == 503 and regen.json()["error"]["code"] == "model_not_ready"
    assert listed.status_code == 200 and listed.json()["models"] == []


async def test_metrics_count_requests_and_decisions(model_dir: Path, catalogue: dict) -> None:
    async with api_client(settings_for(model_dir)) as client:
        await client.post("/regenerate", json=body(catalogue["domains"][0], [catalogue["item_ids"][:5]]))
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'taesar_http_requests_total{method="POST",route="/regenerate",status="200"}' in text
    assert 'taesar_decisions_total{action="keep",model="tiny",source="sync"' in text
    assert "taesar_http_request_duration_seconds_bucket" in text
    assert "taesar_queue_depth" in text


async def test_metrics_count_every_offline_docs_asset_under_one_route_label(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir)) as client:
        for asset in ("redoc.standalone.js", "swagger-ui-bundle.js", "favicon.png"):  # a route and two static files
            assert (await client.get(f"/static-offline-docs/{asset}")).status_code == 200
        text = (await client.get("/metrics")).text
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines() if "static-offline" in line}
    assert routes == {"/static-offline-docs"}


async def test_request_id_is_echoed_or_made_up(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir)) as client:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        made = await client.get("/healthz")
        hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "x" * 500


# -- auth and CORS ------------------------------------------------------------------------


async def test_with_keys_every_resource_requires_one(model_dir: Path, catalogue: dict) -> None:
    request = body(catalogue["domains"][0], [catalogue["item_ids"][:3]])
    async with api_client(settings_for(model_dir, api_keys=["k-one", "k-two"])) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "k-on"}, {"Authorization": "k-one"}):
            for method, path in (("GET", "/models"), ("POST", "/regenerate"), ("GET", "/jobs/abc")):
                r = await client.request(method, path, headers=headers, json=request if method == "POST" else None)
                assert r.status_code == 401, (headers, path, r.text)
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
        ok_bearer = await client.post("/regenerate", json=request, headers={"Authorization": "Bearer k-two"})
        ok_header = await client.get("/models", headers={"X-API-Key": "k-one"})
        either = await client.get("/models", headers={"Authorization": "Bearer nope", "X-API-Key": "k-two"})
        assert ok_bearer.status_code == ok_header.status_code == either.status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path


async def test_without_keys_no_header_is_needed(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir)) as client:
        assert (await client.get("/models")).status_code == 200


def test_caller_id_is_stable_and_does_not_reveal_the_key() -> None:
    assert caller_id("secret-key") == caller_id("secret-key") != caller_id("secret-kez")
    assert len(caller_id("secret-key")) == 16 and "secret" not in caller_id("secret-key")
    assert key_matches("b", ["a", "b"]) and not key_matches("", ["a"]) and not key_matches("ä", ["a"])


async def test_cors_is_closed_by_default_and_opened_by_settings(model_dir: Path) -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    async with api_client(settings_for(model_dir)) as client:
        closed = await client.options("/regenerate", headers=preflight)
        simple = await client.get("/healthz", headers={"Origin": "https://ui.example"})
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in simple.headers
    async with api_client(settings_for(model_dir, cors_origins=["https://ui.example"])) as client:
        opened = await client.options("/regenerate", headers=preflight)
        other = await client.options("/regenerate", headers={**preflight, "Origin": "https://evil.example"})
    assert opened.headers["access-control-allow-origin"] == "https://ui.example"
    assert "access-control-allow-origin" not in other.headers


async def test_logs_carry_no_keys_or_payloads(model_dir: Path, catalogue: dict, capsys) -> None:
    secret_item = catalogue["item_ids"][0]
    async with api_client(settings_for(model_dir, api_keys=["very-secret-key"], log_level="INFO")) as client:
        await client.post(
            "/regenerate",
            json={**body(catalogue["domains"][0], [[secret_item, "payload-marker"]], unknown_items="drop")},
            headers={"Authorization": "Bearer very-secret-key"},
        )
    logged = capsys.readouterr().err
    request_lines = [json.loads(x) for x in logged.splitlines() if x.startswith("{") and '"request"' in x]
    assert any(x["route"] == "/regenerate" and x["caller"] == caller_id("very-secret-key") for x in request_lines)
    assert "very-secret-key" not in logged and "payload-marker" not in logged
