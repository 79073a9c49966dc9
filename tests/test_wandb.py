"""W&B logging (offline, no network) and the other loggers, through the real ``ltu`` CLI on the
digits MLP: the resolved config in the run config, the selected epoch's metrics and a stage's
evaluation in the run summary, gradient histograms, the benchmark's grouped runs with its
results table and plots, and CSV/TensorBoard runs under ``--trainer.default_root_dir``.

Offline runs keep everything in ``offline-run-*/run-<id>.wandb`` (wandb-core writes config.yaml
and wandb-summary.json only when a run is synced), so the tests read that record log."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import wandb
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DIGITS = str(CONFIGS / "pretrain" / "digits.yaml")
WANDB_YAML = str(CONFIGS / "logger" / "wandb.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


# ------------------------------------------------------------------ reading offline runs
def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` (a LevelDB-style log:
    7-byte file header, 32 KiB blocks of chunks with a 7-byte header crc32/length/type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, block, pos, buf, records = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk of a record
            records.append(pb.Record.FromString(buf))
            buf = b""
    return records


def _items(records: list, kind: str, field: str) -> list[tuple[str, object]]:
    return [
        (item.key or "/".join(item.nested_key), json.loads(item.value_json))
        for r in records
        if r.WhichOneof("record_type") == kind
        for item in getattr(getattr(r, kind), field)
    ]


def run_config(records: list) -> dict:
    """The run config: what ``wandb.init(config=...)`` set (in the run record), then updates."""
    init = [
        (item.key or "/".join(item.nested_key), json.loads(item.value_json))
        for r in records
        if r.WhichOneof("record_type") == "run"
        for item in r.run.config.update
    ]
    return dict(init + _items(records, "config", "update"))


def run_summary(records: list) -> dict:
    return dict(_items(records, "summary", "update"))


def run_history(records: list, key: str) -> list[float]:
    return [
        json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
        if (item.key or "/".join(item.nested_key)) == key
    ]


def run_info(records: list):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def offline_runs(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


def close_wandb() -> None:
    """Finish the active run and wait until wandb-core has written every record: ``finish()``
    returns before the record log is flushed (an in-process, in-test concern only)."""
    wandb.finish()
    wandb.teardown()


# ---------------------------------------------------------------------------- fixtures
def _isolate_wandb(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    mp.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(tmp / ".wandb-home"))
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_DIR"):
        mp.delenv(var, raising=False)


@pytest.fixture
def wandb_offline(in_tmp, monkeypatch):
    """W&B offline with its config/cache in the temp dir; the run a test leaves active is
    finished (in-process, the next WandbLogger would otherwise reuse it)."""
    torch.set_num_threads(1)
    _isolate_wandb(monkeypatch, in_tmp)
    yield in_tmp
    close_wandb()


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    """One digits pretrain (3 epochs, RichProgressBar) logged offline with configs/logger/wandb.yaml."""
    from conftest import _run_ltu

    tmp = tmp_path_factory.mktemp("pretrain")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        _isolate_wandb(mp, tmp)
        torch.set_num_threads(1)
        root = tmp / "runs" / "original"
        _run_ltu(
            ["fit", "--config", DIGITS, "--config", WANDB_YAML,
             "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "3",
             "--trainer.callbacks+", "RichProgressBar"]
        )  # fmt: skip
        close_wandb()
    return root


def ltu_digits_config(path: Path) -> Path:
    """LTU on the digits split of configs/pretrain/digits.yaml, tiny, watching gradients."""
    cfg = yaml.safe_load(Path(DIGITS).read_text())
    backbone = cfg["model"]["init_args"]["backbone"]
    cfg["model"] = {
        "class_path": "LTUModule",
        "init_args": {"backbone": backbone, "num_auditors": 1, "auditor_epochs": 30},
    }
    cfg["data"]["init_args"]["train_on"] = "unlearn"
    cfg["data"]["init_args"]["access"] = "partial+holdout"  # the auditors read the holdout
    cfg["trainer"].update(
        max_epochs=3,
        num_sanity_val_steps=0,
        callbacks=[{"class_path": "WandbWatch", "init_args": {"log_freq": 1}}],
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------- tests
def test_run_config_is_the_resolved_cli_config(pretrain):
    (run,) = offline_runs(pretrain)  # save_dir: null -> under --trainer.default_root_dir
    records = wandb_records(run)
    info = run_info(records)
    assert info.project == "ltu-lightning"
    assert list(info.tags) == ["ltu-lightning"]
    config = run_config(records)
    saved = yaml.safe_load((pretrain / "config.yaml").read_text())
    for key in ("model", "data", "trainer", "seed_everything"):
        assert config[key] == saved[key], key
    # nested only: Lightning's autolog would add the module's hparams again as flat keys
    assert set(config) - {"_wandb"} <= set(saved) and "num_classes" not in config
    # the mode WANDB_MODE decided is the one recorded (the YAML's offline flag is overridden)
    assert config["trainer"]["logger"]["init_args"]["offline"] is True
    # the config.yaml file itself travels with the run (wandb's files/config.yaml is its own)
    assert yaml.safe_load((run / "files" / "cli" / "config.yaml").read_text()) == saved
    assert config["model"]["class_path"].split(".")[-1] == "ClassifierModule"
    assert config["model"]["init_args"]["backbone"]["init_args"]["hidden"] == [256, 256]
    assert config["seed_everything"] == 0
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(pretrain)
    assert config["trainer"]["callbacks"][-1]["class_path"].endswith("RichProgressBar")


def test_summary_holds_the_selected_epoch(pretrain):
    records = wandb_records(offline_runs(pretrain)[0])
    accs = run_history(records, "val/acc")
    summary = run_summary(records)
    assert len(accs) == 3
    best = max(range(3), key=lambda i: accs[i])
    assert summary["selected/val/acc"] == pytest.approx(accs[best])
    assert summary["selected/epoch"] == best
    assert summary["selected/val/loss"] == pytest.approx(run_history(records, "val/loss")[best])


def test_ltu_unlearning_run_summary_and_gradients(pretrain, wandb_offline, run_ltu):
    """``stop_rule: criterion`` keeps the epoch of the lowest val/criterion: its selection
    metrics are the summary's; WandbWatch sees the gradients LTU computes with autograd.grad."""
    root = wandb_offline / "ltu"
    run_ltu(
        ["fit", "--config", ltu_digits_config(wandb_offline / "ltu.yaml"), "--config", WANDB_YAML,
         "--trainer.default_root_dir", root,
         "--model.init_args.original_ckpt", pretrain / "checkpoints" / "last.ckpt",
         "--data.init_args.manifest_path", pretrain.parent / "digits" / "split_manifest.json",
         "--trainer.logger.init_args.job_type", "ltu", *QUIET]
    )  # fmt: skip
    close_wandb()
    (run,) = offline_runs(root)
    records = wandb_records(run)
    assert run_info(records).job_type == "ltu"
    assert run_config(records)["model"]["class_path"].split(".")[-1] == "LTUModule"
    criteria = run_history(records, "val/criterion")
    assert len(criteria) == 3
    best = min(range(3), key=lambda i: criteria[i])
    summary = run_summary(records)
    assert summary["selected/val/criterion"] == pytest.approx(criteria[best])
    assert summary["selected/epoch"] == best
    for key in ("val/forget_acc", "val/acc", "val/loss_auc"):
        assert summary[f"selected/{key}"] == pytest.approx(run_history(records, key)[best]), key
    assert any(k.startswith("gradients/net.") for k in summary)


def test_evaluate_logs_its_metrics_to_the_configured_logger(
    pretrain, wandb_offline, run_ltu, capsys
):
    root = wandb_offline / "evaluated"
    run_ltu(
        ["evaluate", "--config", DIGITS, "--config", WANDB_YAML, "--trainer.default_root_dir", root,
         "--data.init_args.manifest_path", pretrain.parent / "digits" / "split_manifest.json",
         "--ckpt_path", pretrain / "checkpoints" / "last.ckpt"]
    )  # fmt: skip
    close_wandb()
    printed = capsys.readouterr().out
    (run,) = offline_runs(root)
    records = wandb_records(run)
    summary = run_summary(records)
    ta = float(
        next(ln for ln in printed.splitlines() if ln.strip().startswith("TA:")).split(":")[1]
    )
    assert summary["eval/TA"] == pytest.approx(ta, abs=1e-4)
    assert f"verdict: {summary['eval/verdict']}: " in printed
    assert run_config(records)["model"]["class_path"].split(".")[-1] == "ClassifierModule"


def test_log_model_uploads_checkpoints_as_artifacts(wandb_offline, run_ltu):
    """With WANDB_MODE set (offline here), ``log_model`` keeps every saved checkpoint as a
    ``model`` artifact of the run (stored in the record log until synced)."""
    root = wandb_offline / "logged"
    run_ltu(
        ["fit", "--config", DIGITS, "--config", WANDB_YAML, "--trainer.default_root_dir", root,
         "--trainer.max_epochs", "1", "--trainer.logger.init_args.log_model", "true", *QUIET]
    )  # fmt: skip
    close_wandb()
    (run,) = offline_runs(root)
    artifacts = [
        r.artifact for r in wandb_records(run) if r.WhichOneof("record_type") == "artifact"
    ]
    assert artifacts and {a.type for a in artifacts} == {"model"}
    assert {m.path for a in artifacts for m in a.manifest.contents} == {"model.ckpt"}


@pytest.mark.parametrize("logger", ["default", "CSVLogger"])
def test_other_loggers_write_under_default_root_dir(logger, in_tmp, run_ltu):
    """Without W&B: Lightning's default logger (TensorBoard, installed) or CSV (whose save_dir
    is required, as in Lightning's docs). Both get the resolved config as hyperparameters."""
    root = in_tmp / "elsewhere" / "original"
    chosen = (
        []
        if logger == "default"
        else ["--trainer.logger", logger, "--trainer.logger.save_dir", root]
    )
    run_ltu(
        ["fit", "--config", DIGITS, *chosen, "--trainer.default_root_dir", root,
         "--trainer.max_epochs", "1", *QUIET]
    )  # fmt: skip
    version = root / "lightning_logs" / "version_0"
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert (version / "config.yaml").is_file()
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["model"]["class_path"].split(".")[-1] == "ClassifierModule"
    assert hparams["trainer"]["default_root_dir"] == str(root)
    if logger == "CSVLogger":
        with (version / "metrics.csv").open() as f:
            assert "val/acc" in next(csv.reader(f))
    else:
        assert list(version.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in in_tmp.iterdir()) == ["elsewhere", "runs"]  # runs/: the manifest


@pytest.mark.parametrize("mode", [None, "online"])
def test_a_set_wandb_mode_decides_over_the_yaml(mode, in_tmp, monkeypatch):
    """WandbLogger(offline=True) would force offline; without WANDB_MODE the YAML's default
    stays. Only the config is checked: no W&B run starts."""
    from ltu_lightning.cli import LTUCLI

    if mode is None:
        monkeypatch.delenv("WANDB_MODE")
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    cli = LTUCLI(
        args=["--config", DIGITS, "--config", WANDB_YAML, "--trainer.default_root_dir", "r"],
        run=False,
    )
    init = cli.config.trainer.logger.init_args
    assert init.offline is (mode is None)
    assert init.save_dir == cli.trainer.logger.save_dir == "r"
    assert not (in_tmp / "r").exists()


def test_wandb_watch_without_a_wandb_logger_warns():
    from ltu_lightning.callbacks import WandbWatch

    with pytest.warns(UserWarning, match="no WandbLogger"):
        WandbWatch().on_fit_start(SimpleNamespace(loggers=[]), torch.nn.Linear(1, 1))


#: (epoch, val/criterion) as validation reports them; the first is the sanity check
VALIDATIONS = [(0, 0.0), (0, 0.5), (1, 0.2), (2, 0.9), (3, 0.2)]


@pytest.mark.parametrize(
    "monitor, mode, epoch",
    [("val/criterion", "min", 1), ("val/criterion", "max", 2), (None, "min", 3)],
)
def test_selection_summary_keeps_the_monitored_best_else_the_last(
    monitor, mode, epoch, monkeypatch
):
    """The sanity check and non-``val/`` metrics are ignored; a tie keeps the first epoch (as
    ModelCheckpoint does); no monitor (``stop_rule: budget``) keeps the last epoch."""
    from ltu_lightning import callbacks

    written = []
    monkeypatch.setattr(callbacks, "update_wandb_summary", lambda _, m: written.append(m))
    module = SimpleNamespace(monitor=monitor, monitor_mode=mode)
    selection = callbacks.SelectionSummary()
    selection.on_fit_start(None, module)
    for i, (current_epoch, criterion) in enumerate(VALIDATIONS):
        metrics = {"val/criterion": criterion, "val/forget_acc": 10.0 * i, "train/loss": 1.0}
        trainer = SimpleNamespace(
            sanity_checking=i == 0,
            current_epoch=current_epoch,
            callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
            loggers=[],
        )
        selection.on_validation_end(trainer, module)
    selection.on_fit_end(trainer, module)
    assert written == [
        {
            "selected/val/criterion": pytest.approx(VALIDATIONS[epoch + 1][1]),
            "selected/val/forget_acc": 10.0 * (epoch + 1),
            "selected/epoch": epoch,
        }
    ]


def test_benchmark_logs_grouped_stage_runs_and_a_report(wandb_offline, run_ltu, capsys):
    out = wandb_offline / "bench"
    bench = {
        "name": "digits",
        "original": DIGITS,
        "retrain": str(CONFIGS / "retrain" / "digits.yaml"),
        "seeds": [0],
        "out": str(out),
        "methods": [{"key": "ltu:partial+holdout", "config": str(ltu_digits_config(wandb_offline / "ltu.yaml"))}],
        "overrides": {"trainer.max_epochs": 2},
    }  # fmt: skip
    (wandb_offline / "bench.yaml").write_text(yaml.safe_dump(bench))
    run_ltu(["benchmark", "--config", wandb_offline / "bench.yaml", "--wandb"])
    close_wandb()
    assert "W&B group digits-" in capsys.readouterr().out
    stages = {
        "original": "original",
        "retrain": "retrain",
        "ltu:partial+holdout": "ltu_partial+holdout",
    }
    groups = set()
    for job_type, folder in stages.items():
        (run,) = offline_runs(out / "seed_0" / folder)
        records = wandb_records(run)
        info = run_info(records)
        assert (info.job_type, info.display_name) == (job_type, f"{job_type}-seed0")
        groups.add(info.run_group)
        summary = run_summary(records)
        metrics = json.loads((out / "seed_0" / folder / "metrics.json").read_text())["metrics"]
        for key in ("UA", "RA", "TA", "MIA", "loss_auc"):
            assert summary[f"eval/{key}"] == pytest.approx(metrics[key]), (folder, key)
        # one unit for accuracy: the validation accuracy a stage logs and the test accuracy of
        # its evaluation are both percentages (digits: both near 90)
        assert abs(summary["selected/val/acc"] - summary["eval/TA"]) < 25, folder
        assert 10 < run_history(records, "val/acc")[-1] <= 100, folder
    results = json.loads((out / "results.json").read_text())["methods"]
    assert summary["eval/avg_gap"] == pytest.approx(
        results["ltu:partial+holdout"]["avg_gap"]["mean"]
    )
    (report,) = offline_runs(out)
    info = run_info(wandb_records(report))
    assert info.job_type == "report" and {info.run_group} == groups
    config = run_config(wandb_records(report))
    for key in ("name", "original", "retrain", "methods", "overrides", "seeds"):
        assert config[key] == bench[key], key
    charts = {k.rsplit("/", 1)[-1] for k in config if k.startswith("_wandb/visualize/charts/")}
    assert charts == {"avg_gap", "UA", "RA", "TA", "MIA", "avg_gap_vs_time"}
    assert info.run_group.startswith("digits-")
    (table,) = (report / "files" / "media" / "table").glob("results_*.table.json")
    table = json.loads(table.read_text())
    assert [row[0] for row in table["data"]] == ["original", "retrain", "ltu:partial+holdout"]
    assert table["data"][2][table["columns"].index("UA_mean")] == pytest.approx(
        results["ltu:partial+holdout"]["UA"]["mean"]
    )
    images = (report / "files" / "media" / "images" / "plots").glob("*.png")
    assert sorted(p.name.rsplit("_", 2)[0] for p in images) == sorted(
        p.stem for p in out.glob("*.png")
    )
