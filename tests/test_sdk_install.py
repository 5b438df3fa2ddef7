"""The SDK installs on its own: `sdk/` is built into a wheel and installed into a fresh
virtualenv, which then lacks torch, FastAPI and Celery, and README's SDK example runs
there, as written, against a live server.

Offline and fast: the wheel is built with this venv's setuptools, and the wheels of
the SDK's dependency closure (httpx, pydantic and what they need) are packed from the
distributions installed in this venv, so pip installs with `--no-index`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.api_support import model_dir_with, settings_for

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API_KEY = "sdk-install-key"
# pip with the user's configuration left out: the install must need nothing but the wheelhouse
PIP_ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def readme_sdk_example() -> str:
    """README's one ```python block that uses the SDK."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    sdk_blocks = [b for b in blocks if "from taesar_client import" in b]
    assert len(sdk_blocks) == 1, f"README.md should hold one SDK example, found {len(sdk_blocks)}"
    return sdk_blocks[0]


# -- a wheelhouse from this venv ----------------------------------------------------------------


def build_sdk_wheel(out: Path, scratch: Path) -> Path:
    """`pip wheel` of a copy of sdk/ (a build writes build/ and *.egg-info next to its sources)."""
    src = scratch / "sdk"
    shutil.copytree(ROOT / "sdk", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*cmd, "-w", str(out), str(src)], check=True, env=PIP_ENV)
    (wheel,) = out.glob("taesar_client-*.whl")
    return wheel


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(metadata).decode()
    lines = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines]


def dependency_closure(requirements: list[Requirement]) -> list[md.Distribution]:
    """The installed distributions that `requirements` need here, transitively (no extras)."""
    env = {**default_environment(), "extra": ""}
    todo, seen, found = list(requirements), set(), []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        dist = md.distribution(req.name)
        assert req.specifier.contains(dist.version, prereleases=True), f"{req} but {dist.version} is installed"
        found.append(dist)
        todo += [Requirement(r) for r in dist.requires or []]
    return found


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pack_installed(dist: md.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists.

    Scripts outside site-packages are left out (pip writes them again from the entry
    points), and so are bytecode and the installer's own marker files.
    """
    assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD"
    info = next(f for f in dist.files if f.parent.name.endswith(".dist-info")).parent
    tags = [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = out / f"{name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files:
            if f.parts[0] == ".." or f.suffix == ".pyc" or (f.parent == info and f.name in skip):
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            z.writestr(f.as_posix(), data)
            record.append(f"{f.as_posix()},{_record_hash(data)},{len(data)}")
        record.append(f"{info.as_posix()}/RECORD,,")
        z.writestr(f"{info.as_posix()}/RECORD", "\n".join(record) + "\n")
    return path


# -- the fresh venv -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new venv holding the SDK and its dependencies, nothing else."""
    root = tmp_path_factory.mktemp("sdk-install")
    wheels = root / "wheels"
    wheels.mkdir()
    sdk_wheel = build_sdk_wheel(wheels, root)
    for dist in dependency_closure(wheel_requirements(sdk_wheel)):
        pack_installed(dist, wheels)
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(root / "venv")  # this venv's pip installs into it
    python = root / "venv" / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index"]
    subprocess.run([*install, "--find-links", str(wheels), str(sdk_wheel)], check=True, env=PIP_ENV)
    return python


def run_in(python: Path, code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in that venv, away from the checkout (no PYTHONPATH, cwd outside it)."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(python), "-c", code], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_the_sdk_venv_has_the_sdk_and_neither_the_service_nor_its_stack(sdk_python: Path, tmp_path: Path) -> None:
    code = (
        "import importlib, importlib.util, taesar_client\n"
        "print(taesar_client.__file__)\n"
        "for name in ('torch', 'fastapi', 'celery', 'starlette', 'redis', 'numpy', 'app', 'models', 'workers'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} is importable in the SDK venv')\n"
    )
    done = run_in(sdk_python, code, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    installed_at = Path(done.stdout.strip())
    assert sdk_python.parents[1] in installed_at.parents, f"taesar_client came from {installed_at}"


@pytest.fixture(scope="module")
def live_url(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list[str]]]:
    from app.main import create_app
    from tests.live_server import catalogue_sample, live_server

    model_dir = model_dir_with(tiny_bundle, tmp_path_factory.mktemp("sdk-install-models"))
    target, items = catalogue_sample(tiny_bundle)
    with live_server(create_app(settings_for(model_dir, api_keys=[API_KEY]))) as url:
        yield url, target, items


@pytest.mark.slow
def test_readme_sdk_example_runs_in_the_sdk_venv(
    sdk_python: Path, live_url: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    url, target, items = live_url
    env = {"TAESAR_URL": url, "TAESAR_API_KEY": API_KEY, "TAESAR_TARGET": target, "TAESAR_ITEMS": " ".join(items)}
    done = run_in(sdk_python, readme_sdk_example(), tmp_path, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tiny [" in done.stdout and "regenerated:" in done.stdout
    assert "refused: unknown_item" in done.stdout
