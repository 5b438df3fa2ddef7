"""The `taesar` CLI end to end on a generated 3-domain log with unusual domain names."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from models.bundle import read_manifest
from models.data import load_dataset, train_part
from models.decoding import min_memory_budget_mb
from models.pretrain import TrainConfig
from tests.synthetic import make_log

DOMAINS = ["Bücher & Co", "electronics", "z"]
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    log = root / "log.tsv"
    make_log(DOMAINS, n_users=40, seed=3).rename(columns={"user_id": "uid"}).to_csv(log, sep="\t", index=False)
    code, output = invoke("data", "import", "--interactions", log, "--out", root / "data", "--user-col", "uid")
    assert code == 0, output
    code, output = invoke(
        "pretrain", "--data", root / "data", "--out", root / "bundle", "--epochs", 2, "--adapt-epochs", 1, "--seed", 1,
        "--patience", 3,
    )  # fmt: skip
    assert code == 0, output
    return root / "data", root / "bundle"


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("target", DOMAINS)
def test_regenerate_rewrites_every_users_train_part_into_the_target(
    trained: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    data, bundle = trained
    out = tmp_path / "out.jsonl"
    code, output = invoke("regenerate", "--bundle", bundle, "--target", target, "--data", data, "--out", out)
    assert code == 0, output
    ds = load_dataset(data)
    lines = read_lines(out)
    assert [line["user_id"] for line in lines] == ds.user_ids
    for line, seq in zip(lines, ds.sequences, strict=True):
        assert len(line["decisions"]) == len(train_part(seq, 1))
        assert all(ds.catalogue.domain_of(ds.catalogue.dense(i)) == target for i in line["sequence"])
        assert sum(line["stats"].values()) == len(line["decisions"])
    assert "kept" in output and target in output


def test_the_bundle_records_its_domains_checksums_and_metrics(trained: tuple[Path, Path]) -> None:
    _, bundle = trained
    manifest = read_manifest(bundle)
    assert manifest["catalogue"]["domains"] == sorted(DOMAINS)
    assert set(manifest["files"]["experts"]) == set(DOMAINS)
    code, output = invoke("info", bundle)
    assert code == 0 and json.loads(output)["domains"].keys() == set(DOMAINS)


def test_unknown_items_fail_by_default_and_leave_no_output(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = trained
    src = tmp_path / "in.jsonl"
    src.write_text('{"user_id": "a", "items": ["0-1", "1-2"]}\n{"user_id": "b", "items": ["0-1", "nope", "2-3"]}\n')
    out = tmp_path / "out.jsonl"
    code, output = invoke("regenerate", "--bundle", bundle, "--target", "z", "--input", src, "--out", out)
    assert code == 2
    assert "unknown item 'nope' at position 1 of sequence 1" in output and "--unknown-items drop" in output
    assert not out.exists() and not list(tmp_path.glob(".*partial"))

    code, output = invoke(
        "regenerate", "--bundle", bundle, "--target", "z", "--input", src, "--out", out, "--unknown-items", "drop"
    )
    assert code == 0, output
    dropped = read_lines(out)[1]["decisions"][1]
    assert dropped == {"position": 1, "item": "nope", "domain": None, "action": "discard", "reason": "unknown_item"}


def test_recbole_export_has_the_atomic_header(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    out = tmp_path / "z.inter"
    code, output = invoke(
        "regenerate", "--bundle", bundle, "--target", "z", "--data", data, "--out", out, "--format", "recbole"
    )
    assert code == 0, output
    header, *rows = out.read_text().splitlines()
    assert header == "user_id:token\titem_id_list:token_seq\titem_id:token"
    assert rows and all(len(r.split("\t")) == 3 for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "import", "--interactions", "/no/such.csv", "--out", "x"], "no such file"),
        (["pretrain", "--data", "/no/such/dir", "--out", "x"], "/no/such/dir"),
        (["regenerate", "--bundle", "/no/bundle", "--target", "z", "--input", "x", "--out", "y"], "/no/bundle"),
        (["info", "/no/bundle"], "/no/bundle"),
    ],
)
def test_user_mistakes_end_in_one_error_line_and_exit_code_2(args: list[str], message: str) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert output.startswith("error:") and message in output
    assert "Traceback" not in output


def test_pretrain_records_its_early_stopping_patience_in_the_bundle(trained: tuple[Path, Path]) -> None:
    training = read_manifest(trained[1])["training"]
    assert (training["patience"], training["epochs"], training["adapt_epochs"]) == (3, 2, 1)
    # and the manifest gives the config back, the run's history and timings aside
    cfg = TrainConfig.from_dict(training)
    assert isinstance(cfg.ks, tuple) and cfg.patience == 3
    assert asdict(cfg) | {"ks": list(cfg.ks)} == {k: training[k] for k in asdict(cfg)}


REGENERATE = ["regenerate", "--bundle", "b", "--target", "z", "--out", "o"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["pretrain", "--data", "d", "--out", "b", "--epochs", "0"], "--epochs"),
        (["pretrain", "--data", "d", "--out", "b", "--patience", "0"], "--patience"),
        (["pretrain", "--data", "d", "--out", "b", "--adapt-epochs", "-1"], "--adapt-epochs"),
        (["pretrain", "--data", "d", "--out", "b", "--max-steps", "0"], "--max-steps"),
        (["pipeline", "--data", "d", "--out", "r", "--max-steps", "-2"], "--max-steps"),
        (["pretrain", "--data", "d", "--out", "b", "--logits-budget-mb", "0"], "--logits-budget-mb"),
        (["pretrain", "--data", "d", "--out", "b", "--logits-budget-mb", "nan"], "--logits-budget-mb"),
        (["pretrain", "--data", "d", "--out", "b", "--logits-budget-mb", "inf"], "--logits-budget-mb"),
        (["pretrain", "--data", "d", "--out", "b", "--logits-budget-mb", "1e-9"], "--logits-budget-mb"),
        (["pipeline", "--data", "d", "--out", "r", "--holdout", "0"], "--holdout"),
        (["pipeline", "--data", "d", "--out", "r", "--no-evaluate", "--epochs", "0"], "--epochs"),
        (["pipeline", "--data", "d", "--out", "r", "--adapt-epochs", "-1"], "--adapt-epochs"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--holdout", "0"], "--holdout"),
        (["data", "ml100k", "--out", "d", "--holdout", "0"], "--holdout"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--seeds", "0"], "--seeds"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--epochs", "0"], "--epochs"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--patience", "0"], "--patience"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--jobs", "0"], "--jobs"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--lr", "0"], "--lr"),
        (["pipeline", "--data", "d", "--out", "r", "--seeds", "0"], "--seeds"),
        (["pipeline", "--data", "d", "--out", "r", "--lr", "-0.001"], "--lr"),
        (["pipeline", "--data", "d", "--out", "r", "--lr", "nan"], "--lr"),
        (["pipeline", "--data", "d", "--out", "r", "--lr", "inf"], "--lr"),
        (["--threads", "0", "info", "b"], "--threads"),
        (["worker", "--concurrency", "0"], "--concurrency"),
        (["worker", "--gpus", ""], "--gpus"),
        (["worker", "--gpus", "0,0"], "--gpus"),
        (["worker", "--gpus", "0,,1"], "--gpus"),
        (["worker", "--gpus", "0;1"], "--gpus"),
        ([*REGENERATE, "--memory-budget-mb", "lots"], "--memory-budget-mb"),
        ([*REGENERATE, "--memory-budget-mb", "0"], "--memory-budget-mb"),
        ([*REGENERATE, "--memory-budget-mb", "nan"], "--memory-budget-mb"),
        (["pipeline", "--data", "d", "--out", "r", "--memory-budget-mb", "-64"], "--memory-budget-mb"),
        (
            ["evaluate", "--data", "d", "--out", "r", "--target", "z", "--memory-budget-mb", "Auto"],
            "--memory-budget-mb",
        ),
        (
            ["export", "recbole", "--data", "d", "--out", "r", "--target", "z", "--memory-budget-mb", ""],
            "--memory-budget-mb",
        ),
    ],
)
def test_out_of_range_numbers_are_refused_before_any_work(args: list[str], option: str) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert f"Invalid value for '{option}'" in output
    assert "Traceback" not in output


def test_a_memory_budget_too_small_for_the_catalogue_is_one_error_line(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bundle = trained
    n_items = read_manifest(bundle)["catalogue"]["offsets"][-1]
    out = tmp_path / "o.jsonl"
    code, output = invoke(
        "regenerate", "--bundle", bundle, "--target", "z", "--data", data, "--out", out, "--memory-budget-mb", "1e-5"
    )
    assert code == 2 and output.startswith("error:") and "Traceback" not in output
    assert f"memory budget 1e-05 MB is too small for a catalogue of {n_items:,} items" in " ".join(output.split())
    assert not out.exists()


def test_a_small_budget_and_auto_both_decode_every_sequence(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    n_items = read_manifest(bundle)["catalogue"]["offsets"][-1]
    small = str(min_memory_budget_mb(n_items, "cpu") * 2)  # a few rows per chunk
    runs = {}
    for budget in (small, "auto"):
        out = tmp_path / f"{budget}.jsonl"
        code, output = invoke(
            "regenerate", "--bundle", bundle, "--target", "z", "--data", data, "--out", out,
            "--memory-budget-mb", budget,
        )  # fmt: skip
        assert code == 0, output
        runs[budget] = [len(line["decisions"]) for line in read_lines(out)]
    # equal decisions under any chunking: test_engine.py, on float64 models where no rounding can flip a tie
    assert runs[small] == runs["auto"] and runs[small]


def test_gpus_cannot_be_combined_with_a_prefork_pool() -> None:
    code, output = invoke("worker", "--gpus", "0,1", "--concurrency", "2")
    assert code == 2 and output.startswith("error:") and "--concurrency" in output


def test_an_unknown_target_domain_names_the_known_ones(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    code, output = invoke("regenerate", "--bundle", bundle, "--target", "Toys", "--data", data, "--out", tmp_path / "o")
    assert code == 2
    assert "unknown domain 'Toys'" in output and "electronics" in output


def test_an_unknown_ablation_is_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    out = tmp_path / "o"
    code, output = invoke(
        "regenerate", "--bundle", bundle, "--target", "z", "--data", data, "--out", out, "--ablation", "bogus"
    )
    assert code == 2 and "Invalid value for '--ablation'" in output and "no_global" in output


def test_pipeline_regenerates_the_chosen_targets_and_writes_a_summary(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, _ = trained
    run = tmp_path / "run"
    code, output = invoke(
        "pipeline", "--data", data, "--out", run, "--targets", "z,electronics", "--epochs", 1, "--adapt-epochs", 1
    )
    assert code == 0, output
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["targets"]) == ["z", "electronics"]
    assert [t["file"] for t in summary["targets"].values()] == ["regenerated/z.jsonl", "regenerated/electronics.jsonl"]
    for stats in summary["targets"].values():
        assert (run / stats["file"]).is_file()
        assert stats["sequences"] == len(load_dataset(data).user_ids)


def test_a_bundle_trained_for_a_smaller_holdout_is_refused_with_a_hint_that_works(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bundle = trained  # the dataset's holdout: 1
    export = ["export", "recbole", "--data", data, "--target", "z", "--variants", "sim,new", "--holdout", "2"]
    code, output = invoke(*export, "--bundle", bundle, "--out", tmp_path / "refused")
    assert code == 2 and "trained with holdout 1" in output and "taesar pretrain --holdout 2" in output
    assert not (tmp_path / "refused").exists()
    code, output = invoke(
        "pretrain", "--data", data, "--out", tmp_path / "b2", "--epochs", 1, "--adapt-epochs", 1, "--holdout", 2
    )
    assert code == 0, output
    assert read_manifest(tmp_path / "b2")["training"]["holdout"] == 2
    code, output = invoke(*export, "--bundle", tmp_path / "b2", "--out", tmp_path / "exported")
    assert code == 0, output
    assert (tmp_path / "exported" / "z-new" / "z-new.test.inter").is_file()


def test_pipeline_names_each_regenerated_file_after_its_domain(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    run = tmp_path / "run"
    code, output = invoke("pipeline", "--data", data, "--out", run, "--bundle", bundle, "--no-evaluate")
    assert code == 0, output
    files = {t: v["file"] for t, v in json.loads((run / "summary.json").read_text())["targets"].items()}
    assert files == {"Bücher & Co": "regenerated/Bücher___Co.jsonl", "electronics": "regenerated/electronics.jsonl",
                     "z": "regenerated/z.jsonl"}  # fmt: skip
    assert sorted(p.name for p in (run / "regenerated").iterdir()) == sorted(Path(f).name for f in files.values())
    assert {read_lines(run / f)[0]["target_domain"] for f in files.values()} == set(files)


def test_pretrain_takes_model_and_training_sizes_and_records_them(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    code, output = invoke(
        "pretrain", "--data", data, "--out", tmp_path / "b", "--epochs", 1, "--adapt-epochs", 1, "--hidden", 24,
        "--layers", 1, "--heads", 3, "--inner", 40, "--dropout", 0.1, "--max-len", 12, "--batch-size", 16,
        "--lr", 0.002,
    )  # fmt: skip
    assert code == 0, output
    manifest = read_manifest(tmp_path / "b")
    model = manifest["model_config"]
    assert (model["hidden"], model["n_layers"], model["n_heads"], model["inner"]) == (24, 1, 3, 40)
    assert (model["dropout"], model["max_len"]) == (0.1, 12)
    assert (manifest["training"]["batch_size"], manifest["training"]["lr"]) == (16, 0.002)
    code, output = invoke("regenerate", "--bundle", tmp_path / "b", "--target", "z", "--data", data, "--out",
                          tmp_path / "z.jsonl")  # fmt: skip
    assert code == 0, output
    code, output = invoke("pretrain", "--data", data, "--out", tmp_path / "c", "--hidden", 10, "--heads", 4)
    assert code == 2 and "--hidden 10 is not a multiple of --heads 4" in output and not (tmp_path / "c").exists()


def test_evaluate_and_pipeline_share_the_default_seed() -> None:
    import typer.main

    command = typer.main.get_command(app)
    defaults = {
        name: next(p.default for p in command.commands[name].params if p.name == "seed")
        for name in ("pretrain", "pipeline", "evaluate")
    }
    assert defaults == {"pretrain": 42, "pipeline": 42, "evaluate": 42}


def test_pipeline_reuses_a_given_bundle_and_logs_each_training(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    run = tmp_path / "run"
    code, output = invoke(
        "pipeline", "--data", data, "--out", run, "--bundle", bundle, "--targets", "z", "--variants", "sim,new",
        "--epochs", 1, "--jobs", 2, "--lr", 0.001,
    )  # fmt: skip
    assert code == 0, output
    assert not (run / "bundle").exists()  # nothing pretrained
    assert json.loads((run / "summary.json").read_text())["bundle"] == str(bundle)
    logged = [line["row"] for line in read_lines(run / "trainings.jsonl")]
    report = json.loads((run / "report.json").read_text())
    assert sorted(r["variant"] for r in logged) == ["new", "sim"]  # in the order they finished
    assert sorted(json.dumps(r, sort_keys=True) for r in logged) == sorted(
        json.dumps(r, sort_keys=True) for r in report["results"]
    )
    assert report["config"]["jobs"] == 2 and report["config"]["downstream"]["lr"] == 0.001
    # new trained on the rows written to regenerated/ (decoded once, for both)
    written = json.loads((run / "summary.json").read_text())["targets"]["z"]
    breakdown = report["targets"]["z"]["decisions"]["new"]
    source = Counter(
        (d["domain"], "replaced" if d["action"] == "replace" else f"discarded:{d['reason']}")
        for line in read_lines(run / written["file"])
        for d in line["decisions"]
        if d["domain"] != "z"
    )
    assert source and source == Counter({(dom, k): n for dom, row in breakdown.items() for k, n in row.items() if n})


def test_pipeline_refuses_a_bundle_trained_on_other_data(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = trained
    log = tmp_path / "other.csv"
    make_log(DOMAINS, n_users=30, seed=4).to_csv(log, index=False)
    code, output = invoke("data", "import", "--interactions", log, "--out", tmp_path / "other")
    assert code == 0, output
    code, output = invoke("pipeline", "--data", tmp_path / "other", "--out", tmp_path / "run", "--bundle", bundle)
    assert code == 2 and "data fingerprints differ" in output


def test_evaluate_resumes_from_its_run_log_and_skips_a_line_cut_short(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, _ = trained
    run = tmp_path / "run"
    args = ["evaluate", "--data", data, "--out", run, "--target", "z", "--variants", "sim,full", "--epochs", 1]
    args += ["--lr", 0.002]
    code, output = invoke(*args, "--seeds", 2)
    assert code == 0, output
    first = json.loads((run / "report.json").read_text())
    assert first["config"]["downstream"]["lr"] == 0.002
    lines = (run / "trainings.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # a kill in the middle of writing the last line; one more seed asked for
    (run / "trainings.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    code, output = invoke(*args, "--seeds", 3, "--resume")
    assert code == 0, output
    second = json.loads((run / "report.json").read_text())
    assert second["reused_trainings"] == 3  # the cut line and the new seed were trained
    assert [json.loads(x) for x in (run / "trainings.jsonl").read_text().splitlines()][:3] == [
        json.loads(x) for x in lines[:3]
    ]
    again = {(r["variant"], r["seed"]): r for r in second["results"]}
    for r in first["results"]:  # retrained or reused, the same numbers
        assert {**again[(r["variant"], r["seed"])], "seconds": 0} == {**r, "seconds": 0}
    assert len(second["results"]) == 6


def test_drop_repeats_leaves_no_replacement_that_repeats_an_item_of_its_row(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bundle = trained
    plain, once = tmp_path / "plain.jsonl", tmp_path / "once.jsonl"
    # no_global: every source item goes local and is replaced, so rows do repeat themselves
    base = ["regenerate", "--bundle", bundle, "--target", "z", "--data", data, "--ablation", "no_global"]
    assert invoke(*base, "--out", plain)[0] == 0
    code, output = invoke(*base, "--out", once, "--drop-repeats")
    assert code == 0, output
    repeats = 0
    for a, b in zip(read_lines(plain), read_lines(once), strict=True):
        seen: set[str] = set()
        for d in b["decisions"]:
            out = d.get("replacement") if d["action"] == "replace" else d["item"] if d["action"] == "keep" else None
            if d["action"] == "replace":
                assert out not in seen
            if out is not None:
                seen.add(out)
        repeats += sum(d.get("reason") == "repeat" for d in b["decisions"])
        # the same rule decided: the option only turns some replacements into discards
        replaced = {d["position"]: d["replacement"] for d in a["decisions"] if d["action"] == "replace"}
        for d in b["decisions"]:
            if d["action"] == "replace" or d.get("reason") == "repeat":
                assert replaced.get(d["position"], d["replacement"]) == d["replacement"]
    assert repeats > 0


def test_pretrain_max_steps_and_logits_budget_reach_the_bundle(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    code, output = invoke(
        "pretrain", "--data", data, "--out", tmp_path / "b", "--epochs", 3, "--adapt-epochs", 2, "--max-steps", 1,
        "--logits-budget-mb", 0.01, "--hidden", 16, "--layers", 1, "--heads", 1, "--inner", 16, "--max-len", 16,
        "--batch-size", 16,
    )  # fmt: skip
    assert code == 0, output
    training = read_manifest(tmp_path / "b")["training"]
    assert (training["max_steps"], training["logits_budget_mb"]) == (1, 0.01)
    assert training["steps"] == {"mixed": 1, **{f"expert:{d}": 1 for d in DOMAINS}}
    assert training["epochs_run"] == len(training["history"]) == 1  # stopped inside the first epoch, validated
    assert not {"world_size", "backend"} & training.keys()
