"""Security properties, each shown by behaviour: constant-time key checks, per-key job
ownership, unguessable job ids, checksummed bundles, no pickle, closed CORS, clean logs."""

from __future__ import annotations

import hmac
import io
import json
import math
import re
import secrets
import shutil
import string
import tokenize
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.deps import caller_id
from tests.api_support import REDIS_URL, api_client, delete_prefix, model_dir_with, settings_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["key-alpha-0001", "key-bravo-0002", "key-charlie-03"]
A = {"Authorization": f"Bearer {KEYS[0]}"}
B = {"X-API-Key": KEYS[1]}


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_with(tiny_bundle, tmp_path_factory.mktemp("security"))


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"test-security-{uuid.uuid4().hex[:8]}"
    yield p
    delete_prefix(p)


@pytest.fixture
async def client(model_dir: Path, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings_for(model_dir, key_prefix=prefix, api_keys=KEYS)) as c:
        yield c


def job_body(catalogue: dict[str, Any], n: int = 2) -> dict[str, Any]:
    return {"target_domain": catalogue["domains"][0], "sequences": [{"items": catalogue["item_ids"][:3]}] * n}


# -- API keys --------------------------------------------------------------------------------


async def test_api_keys_are_compared_with_compare_digest_against_every_key(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    wrong = await client.get("/models", headers={"Authorization": "Bearer key-alpha-0009"})
    assert wrong.status_code == 401
    # every configured key was compared, in constant time, with the presented one
    assert sorted(b for a, b in calls if a == b"key-alpha-0009") == sorted(k.encode() for k in KEYS)
    calls.clear()
    first = await client.get("/models", headers=A)
    assert first.status_code == 200
    # a match on the first key does not stop the loop: timing does not tell which key matched
    assert [b for a, b in calls if a == KEYS[0].encode()] == [k.encode() for k in KEYS]


# -- job ownership and ids -------------------------------------------------------------------


async def test_a_job_is_invisible_to_every_other_key(client: httpx.AsyncClient, catalogue: dict) -> None:
    created = await client.post("/jobs", json=job_body(catalogue), headers=A)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    missing_id = secrets.token_urlsafe(16)
    for method, suffix in (("GET", ""), ("GET", "/results"), ("DELETE", "")):
        theirs = await client.request(method, f"/jobs/{job_id}{suffix}", headers=B)
        nobody = await client.request(method, f"/jobs/{missing_id}{suffix}", headers=B)
        assert theirs.status_code == nobody.status_code == 404, theirs.text
        # not even the answer's shape tells "exists, not yours" from "does not exist"
        assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"] == "job_not_found"
        assert theirs.json()["error"]["message"].replace(job_id, "ID") == nobody.json()["error"]["message"].replace(
            missing_id, "ID"
        )
    mine = await client.get(f"/jobs/{job_id}", headers=A)
    assert mine.status_code == 200 and mine.json()["status"] == "queued"  # B's DELETE cancelled nothing


async def test_job_ids_are_128_random_bits_from_secrets(
    client: httpx.AsyncClient, catalogue: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.routes.jobs as jobs_route

    sizes: list[int] = []
    real = secrets.token_urlsafe

    def spy(n: int) -> str:
        sizes.append(n)
        return real(n)

    monkeypatch.setattr(jobs_route.secrets, "token_urlsafe", spy)
    ids = []
    for _ in range(20):
        r = await client.post("/jobs", json=job_body(catalogue, 1), headers=A)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    assert sizes == [16] * 20  # 16 bytes = 128 bits from the OS CSPRNG
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert all(len(i) == 22 and set(i) <= alphabet for i in ids)
    assert len(set(ids)) == 20
    # no shared prefix or counter: the characters spread over the alphabet
    assert len({i[0] for i in ids}) > 8 and len(set("".join(ids))) > 40
    assert 22 * math.log2(64) >= 128


# -- bundles -----------------------------------------------------------------------------------


async def test_a_bundle_whose_weights_do_not_match_the_manifest_is_never_parsed(
    tiny_bundle: Path, tmp_path: Path, catalogue: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weight file that is valid safetensors, but not the one the manifest's sha256 names
    (e.g. swapped in by someone with write access), is refused before it is parsed."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    import models.bundle

    folder = model_dir_with(tiny_bundle, tmp_path, "good")
    shutil.copytree(tiny_bundle, folder / "tampered")
    weights = folder / "tampered" / "mixed.safetensors"
    tensors = load_tensors(weights.read_bytes())
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.5  # a well-formed file with other weights
    weights.write_bytes(save_tensors(tensors))
    parsed: list[int] = []
    real = models.bundle.load_safetensors

    def spy(blob: bytes) -> Any:
        parsed.append(len(blob))
        return real(blob)

    monkeypatch.setattr(models.bundle, "load_safetensors", spy)
    async with api_client(settings_for(folder)) as client:
        ready = await client.get("/readyz")
        listed = await client.get("/models")
        use = await client.post("/regenerate", json={**job_body(catalogue), "model": "tampered"})
    n_files = 1 + len(catalogue["domains"])
    assert len(parsed) == n_files  # the good bundle's files only
    assert ready.status_code == 200  # the good bundle serves
    assert ready.json()["models"] == ["good"]
    assert [(e["model"], e["code"]) for e in ready.json()["errors"]] == [("tampered", "bad_bundle")]
    (error,) = listed.json()["errors"]
    assert "checksum mismatch for mixed.safetensors" in error["message"]
    assert use.status_code == 503 and use.json()["error"]["code"] == "model_not_ready"


# -- no pickle ---------------------------------------------------------------------------------

# names that deserialize arbitrary objects; comments and strings are not code, so they may mention them
UNSAFE = re.compile(r"\b(pickle|cPickle|cloudpickle|dill|joblib|marshal|shelve|allow_pickle|read_pickle)\b")
UNSAFE_CALLS = re.compile(r"\btorch\s*\.\s*load\b|\bweights_only\s*=\s*False\b")


def code_only(source: str) -> str:
    """The source's tokens without comments and string literals."""
    skip = (tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING)
    return " ".join(t.string for t in tokenize.tokenize(io.BytesIO(source.encode()).readline) if t.type not in skip)


def test_no_code_can_unpickle_anything() -> None:
    sources = [p for d in ("app", "models", "workers", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    offenders = {}
    for path in sources:
        code = code_only(path.read_text())
        found = UNSAFE.findall(code) + UNSAFE_CALLS.findall(code)
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(set(found))
    assert offenders == {}
    # the scan sees code, not just text: it would catch these
    probe = code_only("import pickle\nx = torch . load(f)\n")
    assert UNSAFE.findall(probe) and UNSAFE_CALLS.findall(probe)
    assert not UNSAFE.findall(code_only("s = 'never pickle'  # no pickle\n"))


def test_the_queue_accepts_json_messages_only() -> None:
    from core.queue import create_celery
    from core.settings import Settings

    conf = create_celery(Settings(_env_file=None)).conf  # type: ignore[call-arg]
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_serializer == "json" and conf.result_backend is None


# -- CORS ----------------------------------------------------------------------------------------


async def test_cors_is_closed_by_default_and_open_only_to_configured_origins(model_dir: Path) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    paths = [("GET", "/healthz"), ("GET", "/models"), ("OPTIONS", "/regenerate"), ("OPTIONS", "/jobs")]

    async def answers(settings: Any, origin: str) -> list[httpx.Response]:
        async with api_client(settings) as client:
            return [
                await client.request(m, p, headers={"Origin": origin, **(preflight if m == "OPTIONS" else {})})
                for m, p in paths
            ]

    for r in await answers(settings_for(model_dir), "https://ui.example"):
        assert not any(h.startswith("access-control-") for h in r.headers), dict(r.headers)
    opened = settings_for(model_dir, cors_origins=["https://ui.example"])
    for r in await answers(opened, "https://ui.example"):
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "access-control-allow-credentials" not in r.headers  # keys travel in headers, never cookies
    for r in await answers(opened, "https://evil.example"):
        assert "access-control-allow-origin" not in r.headers
    # error answers carry the header for an allowed origin too, so a browser can read them
    async with api_client(settings_for(model_dir, cors_origins=["https://ui.example"], max_body_bytes=8192)) as c:
        too_big = await c.post("/regenerate", content=b"x" * 5000, headers={"Origin": "https://ui.example"})
    assert too_big.status_code == 413 and too_big.headers["access-control-allow-origin"] == "https://ui.example"


# -- logs ------------------------------------------------------------------------------------------


async def test_logs_carry_no_keys_and_no_payloads(
    model_dir: Path, prefix: str, catalogue: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every kind of request (accepted, refused, unauthenticated, bulk, erroring in a worker)
    with a key and payload markers; neither shows up in any log line, of the API or a worker."""
    from core.jobstore import JobSpec, JobStore
    from workers import loading, tasks

    key = f"secret-{uuid.uuid4().hex}"
    marker = f"payload-{uuid.uuid4().hex[:12]}"
    user = f"user-{uuid.uuid4().hex[:12]}"
    items = catalogue["item_ids"]
    target = catalogue["domains"][0]
    good = {"target_domain": target, "sequences": [{"user_id": user, "items": items[:4]}]}
    with_marker = {
        "target_domain": target,
        "sequences": [{"user_id": user, "items": [items[0], marker]}],
        "options": {"unknown_items": "drop"},
    }
    auth = {"Authorization": f"Bearer {key}"}
    settings = settings_for(model_dir, key_prefix=prefix, api_keys=[key], log_level="DEBUG")
    async with api_client(settings) as client:
        answers = [
            await client.post("/regenerate", json=good, headers=auth),
            await client.post("/regenerate", json=with_marker, headers=auth),
            await client.post("/regenerate", json={**good, "sequences": [{"items": [marker]}]}, headers=auth),
            await client.post("/regenerate", json=good, headers={"Authorization": f"Bearer {key}x"}),
            await client.post("/regenerate", json={**good, "target_domain": marker}, headers={"X-API-Key": key}),
            await client.post("/jobs", json=with_marker, headers=auth),
            await client.post(
                "/jobs",
                params={"target_domain": target},
                content=(json.dumps({"user_id": user, "items": [marker]}) + "\n").encode(),
                headers=auth | {"Content-Type": "application/x-ndjson"},
            ),
            await client.post(
                "/jobs",
                params={"target_domain": target},
                content=f'{{"user_id": "{user}", "items": ["{marker}", ]}}\n'.encode(),
                headers=auth | {"Content-Type": "application/x-ndjson", "Idempotency-Key": marker},
            ),
        ]
        job_id = answers[5].json()["id"]
        read = await client.get(f"/jobs/{job_id}", headers=auth)
    assert [r.status_code for r in answers] == [200, 200, 422, 401, 422, 202, 422, 400]
    assert read.status_code == 200

    # a worker fails a job on an item it does not know: its message names the item, its log must not
    ctx = loading.make_context(settings)
    ctx.load()
    bad_job = uuid.uuid4().hex

    async def stage() -> None:
        r = redis.asyncio.Redis.from_url(REDIS_URL)
        writer = await JobStore(r, prefix, 600).open_job(bad_job, JobSpec(caller_id(key), "tiny", target, {}), 10)
        await writer.add(user, [items[0], marker])
        assert (await writer.commit(10**6)).accepted
        await r.aclose()

    await stage()
    assert tasks.run_chunk(ctx, bad_job, 0) == "failed"
    assert marker in ctx.store.record(bad_job).error["message"]  # the owner still learns which item

    logged = capsys.readouterr()
    text = logged.out + logged.err
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert {"request", "job_submitted", "job_failed"} <= {e["event"] for e in events}
    assert sum(e["event"] == "request" for e in events) == len(answers) + 1
    for secret in (key, marker, user, caller_id(key + "x")):
        assert secret not in text, secret
