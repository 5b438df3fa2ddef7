"""Dockerfile, .dockerignore and docker-compose.yml say what docs/service.md promises.

No Docker engine runs here, so nothing is built or started; `docker compose config`
(or docker-compose v1's, which validates offline too) checks the compose file when a
client is installed, and the structure is checked from the YAML in every case.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# the settings a deployment must be able to set
REQUIRED_ENV = {
    "TAESAR_MODEL_DIR",
    "TAESAR_REDIS_URL",
    "TAESAR_DEVICE",
    "TAESAR_API_KEYS",
    "TAESAR_CHUNK_SIZE",
    "TAESAR_VISIBILITY_TIMEOUT_S",
    "TAESAR_JOB_TTL_S",
    "TAESAR_MAX_SEQUENCES_PER_REQUEST",
    "TAESAR_MAX_PENDING_SEQUENCES",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def setting_env_names() -> set[str]:
    return {f"TAESAR_{name.upper()}" for name in Settings.model_fields}


def compose_validator() -> list[str] | None:
    """`docker compose` (v2 plugin) if it runs, else docker-compose v1, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cmd = compose_validator()
    if cmd is None:
        pytest.skip("no docker compose client installed (apt-get install -y docker-compose validates offline)")
    proc = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_compose_runs_redis_api_and_worker(compose: dict[str, Any]) -> None:
    # services under a profile start only when it is asked for, so `docker compose up` needs no GPU
    default = {name for name, service in compose["services"].items() if not service.get("profiles")}
    assert default == {"redis", "api", "worker"}
    assert set(compose["services"]) - default == {"worker-gpu"}


def test_the_gpu_worker_reserves_gpus_under_its_profile_and_runs_one_process_per_gpu(compose: dict[str, Any]) -> None:
    from workers.main import parse_gpus

    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "count" in device or "device_ids" in device
    assert gpu["command"][:3] == ["taesar", "worker", "--gpus"]
    default_gpus = re.fullmatch(r"\$\{\w+:-(.+)\}", gpu["command"][3])
    assert default_gpus and parse_gpus(default_gpus.group(1)) == ["0"]
    assert gpu["environment"]["TAESAR_DEVICE"] == "cuda"
    assert gpu["image"] == compose["services"]["api"]["image"]
    assert "container_name" not in gpu and "ports" not in gpu
    assert gpu["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_never_evicts_and_has_a_health_check(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_api_is_health_checked_and_waits_for_a_healthy_redis(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["command"][:2] == ["taesar", "serve"] and "0.0.0.0" in api["command"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(str(p).endswith(":8000") for p in api["ports"])


def test_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["command"] == ["taesar", "worker"]
    # a fixed name or a published port would make `--scale worker=N` fail for N > 1
    assert "container_name" not in worker and "ports" not in worker
    assert "redis" in worker["depends_on"]
    assert worker["image"] == compose["services"]["api"]["image"], "api and worker must share one image"


def test_compose_environment_names_are_settings_and_cover_the_required_ones(compose: dict[str, Any]) -> None:
    known = setting_env_names()
    for name in ("api", "worker", "worker-gpu"):
        env = compose["services"][name]["environment"]
        assert set(env) <= known, f"{name}: not Settings fields: {set(env) - known}"
        assert set(env) >= REQUIRED_ENV, f"{name}: missing {REQUIRED_ENV - set(env)}"
        assert env["TAESAR_REDIS_URL"].startswith("redis://redis:")
    api_volumes = compose["services"]["api"]["volumes"]
    assert any(v.endswith(":/models:ro") for v in api_volumes)


def test_documented_settings_are_real_settings() -> None:
    table = re.findall(r"^\| `(TAESAR_[A-Z_]+)` \|", (ROOT / "docs" / "service.md").read_text(), flags=re.M)
    assert set(table) >= REQUIRED_ENV
    assert set(table) <= setting_env_names(), set(table) - setting_env_names()


# -- Dockerfile --------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_defaults_to_slim_python_and_takes_a_cuda_base_and_torch_index() -> None:
    inst = dockerfile_instructions()
    first_from = next(i for i, (op, _) in enumerate(inst) if op == "FROM")
    args_before_from = [arg for op, arg in inst[:first_from] if op == "ARG"]
    assert "BASE=python:3.11-slim" in args_before_from
    assert inst[first_from][1] == "${BASE}"
    args = [arg for op, arg in inst if op == "ARG"]
    assert any(a.startswith("TORCH_INDEX=") and a.endswith("/whl/cpu") for a in args), "CPU torch by default"
    assert any("${TORCH_INDEX}" in arg for op, arg in inst if op == "RUN")


def test_dockerfile_runs_as_a_non_root_user_and_serves_by_default() -> None:
    inst = dockerfile_instructions()
    users = [arg for op, arg in inst if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert inst[-1] == ("CMD", '["taesar", "serve", "--host", "0.0.0.0", "--port", "8000"]')


def test_dockerfile_copies_only_what_exists_and_dockerignore_lets_it_through() -> None:
    ignored = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for op, arg in dockerfile_instructions():
        if op != "COPY" or arg.startswith("--from"):
            continue
        for src in arg.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: no such path"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"COPY {src} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "data", "runs"):
        assert heavy in ignored, f"{heavy} would bloat the build context"


def test_dockerfile_dependency_step_reads_the_dependencies_of_pyproject() -> None:
    run = next(arg for op, arg in dockerfile_instructions() if op == "RUN" and "tomllib" in arg)
    snippet = re.search(r'python -c "(.*?)" ', run).group(1)  # type: ignore[union-attr]
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=ROOT, check=True)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, like the image
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out.stdout.split("\n")[:-1] == deps


def test_the_image_commands_exist_in_the_cli() -> None:
    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    serve = runner.invoke(app, ["serve", "--help"])
    assert serve.exit_code == 0 and "--host" in serve.output and "--port" in serve.output, serve.output
    worker = runner.invoke(app, ["worker", "--help"])
    assert worker.exit_code == 0 and "--concurrency" in worker.output and "--gpus" in worker.output, worker.output
