"""One settings path for the CLI and the service: a flag beats its TAESAR_* variable,
which beats the default, the same for every setting a flag can set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from cli import app
from cli.settings import FLAGS, EngineOptions, load_settings, runtime
from core.settings import Settings
from models.errors import ConfigError

runner = CliRunner()

# field -> (a flag's value, a TAESAR_* value, what the variable's value reads as)
VALUES: dict[str, tuple[Any, str, Any]] = {
    "device": ("cuda", "cpu", "cpu"),
    "torch_threads": (2, "3", 3),
    "memory_budget_mb": (32.0, "64", 64),
    "decode_batch_size": (5, "7", 7),
    "model_dir": (Path("from-flag"), "from-env", Path("from-env")),
    "redis_url": ("redis://flag:6379/0", "redis://env:6379/0", "redis://env:6379/0"),
}


@pytest.fixture(autouse=True)
def no_taesar_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No TAESAR_* variable and no .env file unless a test sets one; the environment
    (which serve and worker write to) and torch's thread count are restored afterwards."""
    saved, threads = dict(os.environ), torch.get_num_threads()
    for name in [n for n in os.environ if n.upper().startswith("TAESAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)
    torch.set_num_threads(threads)


def test_every_flag_names_a_setting_and_every_setting_field_is_covered() -> None:
    assert FLAGS.keys() <= Settings.model_fields.keys()
    assert VALUES.keys() == FLAGS.keys()


@pytest.mark.parametrize("field", list(FLAGS))
def test_a_flag_beats_its_variable_which_beats_the_default(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env, from_env = VALUES[field]
    default = Settings.model_fields[field].get_default(call_default_factory=True)
    assert getattr(load_settings(), field) == default
    monkeypatch.setenv(f"TAESAR_{field.upper()}", env)
    assert getattr(load_settings(), field) == from_env
    assert getattr(load_settings(**{field: None}), field) == from_env  # an option not given
    assert getattr(load_settings(**{field: flag}), field) == flag


def test_a_dotenv_file_is_read_like_the_service_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("TAESAR_DECODE_BATCH_SIZE=9\n")
    assert load_settings().decode_batch_size == 9
    monkeypatch.setenv("TAESAR_DECODE_BATCH_SIZE", "8")
    assert load_settings().decode_batch_size == 8
    assert load_settings(decode_batch_size=4).decode_batch_size == 4


def test_a_bad_variable_is_named_and_a_flag_given_in_its_place_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAESAR_DEVICE", "gpu")
    with pytest.raises(ConfigError, match="TAESAR_DEVICE: Input should be 'auto', 'cpu' or 'cuda'"):
        load_settings()
    assert load_settings(device="cpu").device == "cpu"
    with pytest.raises(ConfigError, match="--threads: Input should be less than or equal to 1024"):
        load_settings(torch_threads=5000)


def test_the_cli_takes_any_positive_memory_budget_and_the_service_16_mb_or_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(memory_budget_mb=1e-5).memory_budget_mb == 1e-5  # a decode checks it
    monkeypatch.setenv("TAESAR_MEMORY_BUDGET_MB", "8")
    with pytest.raises(ConfigError, match="TAESAR_MEMORY_BUDGET_MB"):
        load_settings()
    assert load_settings(memory_budget_mb="auto").memory_budget_mb == "auto"


def test_runtime_resolves_the_device_with_the_models_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAESAR_DEVICE", "cpu")
    monkeypatch.setenv("TAESAR_MEMORY_BUDGET_MB", "64")
    monkeypatch.setenv("TAESAR_DECODE_BATCH_SIZE", "7")
    rt = runtime()
    assert (rt.device_choice, rt.device, rt.memory_budget_mb, rt.batch_size) == ("cpu", "cpu", 64, 7)
    rt = runtime(EngineOptions(device="auto", memory_budget_mb="0.5", batch_size=3))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert (rt.device_choice, rt.device, rt.memory_budget_mb, rt.batch_size) == ("auto", expected, 0.5, 3)


def test_every_option_with_a_setting_defaults_to_it_and_says_so() -> None:
    """An option that has a default of its own would hide the variable."""

    def walk(cmd: Any) -> Iterator[Any]:
        yield from cmd.params
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    seen = set()
    for param in walk(typer.main.get_command(app)):
        flag = next((f for f in param.opts if f in FLAGS.values()), None)
        if flag is None or (flag == "--batch-size" and "TAESAR" not in str(param.show_default)):
            continue  # pretrain's --batch-size is the training batch, no setting
        field = next(k for k, v in FLAGS.items() if v == flag)
        assert param.default is None, flag
        assert f"TAESAR_{field.upper()}" in str(param.show_default), flag
        seen.add(flag)
    assert seen == set(FLAGS.values())


# -- through the command line ---------------------------------------------------------------

NO_DATA = ["pretrain", "--data", "/no/such/dir", "--out", "b"]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_threads_come_from_the_flag_then_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("TAESAR_TORCH_THREADS", "3")
    assert invoke(*NO_DATA)[0] == 2  # the settings are applied before the data is read
    assert torch.get_num_threads() == 3
    assert invoke("--threads", 2, *NO_DATA)[0] == 2
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_taesar_device_reaches_the_commands_and_the_flag_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAESAR_DEVICE", "cuda")
    code, output = invoke(*NO_DATA)
    assert code == 2 and output.startswith("error:")
    assert "torch sees no CUDA device (TAESAR_DEVICE=cuda)" in " ".join(output.split())
    code, output = invoke(*NO_DATA, "--device", "cpu")
    assert code == 2 and "/no/such/dir" in output  # got past the device
    code, output = invoke(*NO_DATA[:-2], "--device", "cuda", "--out", "b")
    assert "(--device cuda)" in " ".join(output.split())


def test_a_bad_variable_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAESAR_DEVICE", "gpu")
    code, output = invoke(*NO_DATA)
    assert code == 2 and output.startswith("error: TAESAR_DEVICE:") and "Traceback" not in output
    code, output = invoke(*NO_DATA, "--device", "cpu")
    assert code == 2 and "/no/such/dir" in output


def test_regenerate_takes_its_engine_settings_by_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr("cli.regenerate.regenerate_file", lambda *args: seen.append(args[-1]))
    args = ["regenerate", "--bundle", "b", "--target", "z", "--out", "o", "--input", "i"]
    monkeypatch.setenv("TAESAR_MEMORY_BUDGET_MB", "64")
    monkeypatch.setenv("TAESAR_DECODE_BATCH_SIZE", "7")
    monkeypatch.setenv("TAESAR_DEVICE", "cpu")
    assert invoke(*args)[0] == 0
    assert invoke(*args, "--memory-budget-mb", "0.25", "--batch-size", "3", "--device", "auto")[0] == 0
    first, second = seen
    assert (first.memory_budget_mb, first.batch_size, first.device_choice) == (64, 7, "cpu")
    assert (second.memory_budget_mb, second.batch_size, second.device_choice) == (0.25, 3, "auto")


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_pass_their_flags_to_the_service_in_place_of_the_variables(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.serve
    import workers.main

    seen: list[Settings] = []
    monkeypatch.setattr(app.serve, "serve_command", lambda **kw: seen.append(Settings()))
    monkeypatch.setattr(workers.main, "worker_command", lambda **kw: seen.append(Settings()))
    monkeypatch.setenv("TAESAR_MODEL_DIR", "env-models")
    monkeypatch.setenv("TAESAR_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("TAESAR_TORCH_THREADS", "3")
    assert invoke(command)[0] == 0
    code, output = invoke("--threads", 2, command, "--model-dir", "flag-models", "--device", "cpu")
    assert code == 0, output
    first, second = seen  # what the service's processes read
    assert (first.model_dir, first.redis_url, first.torch_threads, first.device) == (
        Path("env-models"), "redis://env:6379/0", 3, "auto",
    )  # fmt: skip
    assert (second.model_dir, second.redis_url, second.torch_threads, second.device) == (
        Path("flag-models"), "redis://env:6379/0", 2, "cpu",
    )  # fmt: skip


def test_serve_refuses_a_bad_setting_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.serve

    monkeypatch.setattr(app.serve, "serve_command", lambda **kw: pytest.fail("started"))
    monkeypatch.setenv("TAESAR_CHUNK_SIZE", "0")
    code, output = invoke("serve")
    assert code == 2 and output.startswith("error: TAESAR_CHUNK_SIZE:")
