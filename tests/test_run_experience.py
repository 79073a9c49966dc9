"""What a user sees when a run finishes: no known noise in a fit's or a benchmark's output, the
two-sided forgetting verdict, the benchmark's table cells, notices and progress display."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

#: output a run must not print: each known warning is fixed or silenced (ltu_lightning.quiet)
KNOWN_NOISE = (
    "💡 Tip",
    "litlogger",
    "litmodels",
    "configure_callbacks` will override",
    "LeafSpec",
    "smaller than the logging interval",
    "v_num",
    "sync_dist=True",
    "all_gather is deprecated",
    "anonymous setting has no effect",
    "git root",
    "module(s) in eval mode",
)


def _ltu(args: list[str], cwd: Path) -> str:
    """The ``ltu`` CLI in a fresh process, every Python warning shown; stdout and stderr."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONWARNINGS": "default",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "WANDB_CONFIG_DIR": str(cwd / ".wandb-home"),
        "WANDB_CACHE_DIR": str(cwd / ".wandb-home"),
        "WANDB_DATA_DIR": str(cwd / ".wandb-home"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ltu_lightning", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def _noise(out: str) -> list[str]:
    return [line for line in out.splitlines() if any(n in line for n in KNOWN_NOISE)]


@pytest.mark.timeout(900)
def test_a_fit_and_a_benchmark_print_none_of_the_known_warnings(tmp_path):
    out = _ltu(
        ["fit", "--config", CONFIGS / "pretrain" / "digits.yaml",
         "--config", CONFIGS / "logger" / "wandb.yaml",
         "--trainer.max_epochs", "1", "--trainer.default_root_dir", tmp_path / "fit"],
        tmp_path,
    )  # fmt: skip
    assert "Trainer.fit` stopped" in out  # the run happened and printed
    assert _noise(out) == []
    bench = {
        "name": "digits",
        "original": str(CONFIGS / "pretrain" / "digits.yaml"),
        "retrain": str(CONFIGS / "retrain" / "digits.yaml"),
        "seeds": [0],
        "out": str(tmp_path / "bench"),
        "methods": [{"key": "ltu:partial+holdout", "config": str(CONFIGS / "unlearn" / "ltu_digits.yaml"),
                     "overrides": {"model.init_args.num_auditors": 1, "trainer.max_epochs": 2}}],
        "overrides": {"trainer.max_epochs": 1},
    }  # fmt: skip
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    out = _ltu(["benchmark", "--config", tmp_path / "bench.yaml", "--wandb"], tmp_path)
    assert "| ltu | partial+holdout |" in out
    assert _noise(out) == []
    # W&B's console output (~30 lines per stage) stays out of the benchmark's
    assert [line for line in out.splitlines() if line.startswith("wandb:")] == []
    # a row's own overrides win over --overrides, and the benchmark says so
    assert (
        "notice: ltu:partial+holdout sets its own --trainer.max_epochs 2, which wins over "
        "--overrides --trainer.max_epochs 1" in out
    )
    # one seed: no "±" anywhere in the table; the wall time says what it measures
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 5 and not any("±" in line for line in table)
    assert "wall time" in out and "the whole ltu benchmark process" in out


@pytest.mark.timeout(600)
def test_a_two_process_ddp_fit_prints_none_of_the_known_warnings(tmp_path):
    """Under DDP (2 gloo processes): the epoch-level val/* metrics are synced (no request for
    ``sync_dist=True``), Lightning's all_gather is quiet, and the run finishes (the config is
    saved on rank 0 without a collective only rank 0 would enter)."""
    ddp = CONFIGS / "trainer" / "ddp_cpu.yaml"
    common = ["--config", ddp, "--data.init_args.manifest_path", tmp_path / "m.json",
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    out = _ltu(
        ["fit", "--config", CONFIGS / "pretrain" / "digits.yaml", *common,
         "--trainer.max_epochs", "1", "--trainer.default_root_dir", tmp_path / "original"],
        tmp_path,
    )  # fmt: skip
    out += _ltu(
        ["fit", "--config", CONFIGS / "unlearn" / "ltu_digits.yaml", *common,
         "--config", CONFIGS / "logger" / "wandb.yaml",
         "--model.init_args.original_ckpt", tmp_path / "original" / "checkpoints" / "last.ckpt",
         "--model.init_args.num_auditors", "1", "--trainer.max_epochs", "1",
         "--trainer.default_root_dir", tmp_path / "ltu"],
        tmp_path,
    )  # fmt: skip
    assert out.count("Trainer.fit` stopped") == 2
    assert _noise(out) == []
    (saved,) = (tmp_path / "ltu" / "wandb").glob("offline-run-*/files/cli/config.yaml")
    assert yaml.safe_load(saved.read_text())["trainer"]["strategy"] == "ddp"


# ------------------------------------------------------------------ the two-sided verdict
def _scores(attack: float, raw: float | None, z: float) -> dict[str, float]:
    scores = {"loss_auc": attack, "correct_gap_z": z, "detect_threshold": 0.55,
              "UA": 10.0, "TA": 88.0, "MIA": 12.0}  # fmt: skip
    return scores if raw is None else {**scores, "loss_auc_raw": raw}


@pytest.mark.parametrize(
    "attack, raw, z, expected",
    [
        (0.50, 0.50, 0.0, "forgotten"),
        (0.54, 0.54, 1.9, "forgotten"),
        (0.52, 0.46, -1.9, "forgotten"),
        (0.56, 0.53, 0.0, "still detectable"),  # the trained attack, D_f on the familiar side
        (0.50, 0.56, 0.0, "still detectable"),
        (0.50, 0.50, 2.5, "still detectable"),
        (0.56, 0.47, 0.0, "over-forgotten"),  # the trained attack, D_f on the unfamiliar side
        (0.50, 0.44, 0.0, "over-forgotten"),
        (0.50, 0.50, -2.5, "over-forgotten"),
        (0.50, 0.44, 2.5, "still detectable"),  # remembered by one attack: not forgotten
        (0.45, None, 0.0, "forgotten"),  # metrics without loss_auc_raw read loss_auc both ways
        (0.44, None, 0.0, "over-forgotten"),
    ],
)
def test_the_verdict_is_two_sided(attack, raw, z, expected):
    from ltu_lightning.evaluation.protocol import forgetting_verdict, verdict

    metrics = _scores(attack, raw, z)
    assert forgetting_verdict(metrics) == expected
    assert verdict(metrics).startswith(f"verdict: {expected}: ")


def test_the_verdict_of_constructed_score_sets(tmp_path):
    """Loss scores built so that D_f looks less familiar than test data (higher losses): the
    metrics pipeline itself reports over-forgetting, and the benchmark table shows it."""
    import numpy as np

    from ltu_lightning.evaluation.metrics import unlearning_metrics
    from ltu_lightning.evaluation.protocol import detection_metrics, forgetting_verdict

    rng = np.random.default_rng(0)

    def outputs(loss_mean: float, correct: float, n: int) -> dict[str, np.ndarray]:
        loss = rng.gamma(2.0, loss_mean / 2.0, n)
        conf = np.exp(-loss)
        return {"loss": loss, "confidence": conf, "entropy": 1.0 - conf,
                "correct": rng.random(n) < correct}  # fmt: skip

    test = outputs(0.5, 0.9, 400)
    remaining = outputs(0.2, 0.95, 800)
    verdicts = {}
    for name, forget in {
        "over": outputs(0.9, 0.9, 200),  # D_f: higher losses than unseen data
        "kept": outputs(0.1, 0.99, 200),  # D_f: lower losses (still remembered)
        "gone": outputs(0.5, 0.9, 200),  # D_f: like unseen data
    }.items():
        metrics = unlearning_metrics(forget, remaining, test, seed=0)
        metrics.update(detection_metrics(forget, test))
        verdicts[name] = forgetting_verdict(metrics)
    assert verdicts == {"over": "over-forgotten", "kept": "still detectable", "gone": "forgotten"}


def test_the_table_shows_the_verdicts_and_drops_the_spread_of_one_seed():
    from ltu_lightning.benchmark.report import _fmt, detectable_cell, markdown_table

    stat = {"mean": 1.5, "std": 0.0}
    assert _fmt(stat, 2, seeds=1) == "1.50"
    assert _fmt({"mean": 1.5, "std": 0.25}, 2, seeds=3) == "1.50 ± 0.25"
    one = {"forgotten": 0, "still detectable": 0, "over-forgotten": 1}
    assert detectable_cell({"verdicts": one}) == "over-forgotten"
    three = {"forgotten": 2, "still detectable": 0, "over-forgotten": 1}
    assert detectable_cell({"verdicts": three}) == "2× forgotten, 1× over-forgotten"
    entry = {m: stat for m in ("UA", "RA", "TA", "MIA", "loss_auc", "avg_gap", "time_s", "rte")}
    summary = {"seeds": [0], "methods": {"ga:partial": {**entry, "access": "partial",
               "collapsed": 0, "verdicts": one}}}  # fmt: skip
    table = markdown_table(summary)
    assert table.splitlines()[0].endswith("| detectable |")
    assert table.splitlines()[2].endswith("| over-forgotten |") and "±" not in table


def test_override_notices_name_the_row_and_both_values():
    from ltu_lightning.benchmark.progress import flag_values, override_notices

    assert flag_values(["--a", "1", "--b=2", "--c", "--d", "x"]) == {
        "--a": "1", "--b": "2", "--c": "", "--d": "x"
    }  # fmt: skip
    rows = {
        "ft:full": ["--trainer.max_epochs", "10", "--data.init_args.access", "full"],
        "ft:partial": ["--trainer.max_epochs", "1"],  # the same value: nothing to say
        "ga:partial": [],
    }
    notices = override_notices(["--trainer.max_epochs", "1"], rows)
    assert len(notices) == 1
    assert "ft:full sets its own --trainer.max_epochs 10" in notices[0]
    assert "--overrides --trainer.max_epochs 1" in notices[0]


def test_the_progress_display_shows_stage_seed_and_eta():
    from rich.console import Console

    from ltu_lightning.benchmark.progress import BenchmarkProgress

    console = Console(record=True, width=120, force_terminal=True)
    with BenchmarkProgress(4, console=console) as display:
        display.started(0, "original", "training")
        display.finished(0, "original")
        display.started(0, "ltu:partial+holdout", "unlearning")
        display.progress.refresh()
        text = console.export_text(clear=False)
        assert "seed 0 · ltu:partial+holdout: unlearning" in text
        assert "1/4" in text and "ETA" in text


def test_the_eta_leaves_out_stages_reused_from_an_earlier_run():
    from rich.console import Console

    from ltu_lightning.benchmark.progress import BenchmarkProgress, _EtaColumn

    console = Console(record=True, width=120, force_terminal=True)
    with BenchmarkProgress(10, console=console) as display:
        for stage in ("original", "retrain", "ft:partial"):
            display.started(0, stage, "reusing")
            display.finished(0, stage)
        task = display.progress.tasks[display.task]
        assert task.fields["reused"] == 3
        assert "-:--:--" in _EtaColumn().render(task).plain  # nothing fitted yet: no estimate
        display.started(0, "ltu:partial+holdout", "unlearning")
        time.sleep(1.0)
        display.finished(0, "ltu:partial+holdout")
        task = display.progress.tasks[display.task]
        # 6 stages left at the one fitted stage's pace (≥ 1 s each), not at the pace of the 4
        # finished stages (≈ 0.25 s each)
        h, m, s = map(int, _EtaColumn().render(task).plain.removeprefix("ETA ").split(":"))
        assert h * 3600 + m * 60 + s >= 5


# ----------------------------------------------------------------- the lightning command
@pytest.mark.timeout(300)
def test_the_installed_lightning_command_is_the_ltu_cli(tmp_path):
    """Installed from this tree (into a temp folder, the shared environment untouched), the
    ``lightning`` script runs ``fit --help`` with the project's modules registered."""
    import shutil

    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lightning"] == "ltu_lightning.cli:lightning_main"
    tree = tmp_path / "tree"
    shutil.copytree(
        REPO / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", target, tree],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [target / "bin" / "lightning", "fit", "--help"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: lightning [options] fit")
    # subclass mode: the project's modules and data module are known by their short names
    for name in ("ClassifierModule", "LTUModule", "UnlearningDataModule"):
        assert name in done.stdout, name


def test_the_lightning_command_refuses_when_another_package_provides_one(monkeypatch, capsys):
    from importlib import metadata

    from ltu_lightning import cli

    other = metadata.EntryPoint("lightning", "other_pkg.cli:main", "console_scripts")
    monkeypatch.setattr(metadata, "entry_points", lambda **kw: [other])
    assert cli.other_lightning_commands() == ["other_pkg.cli:main"]
    with pytest.raises(SystemExit) as exit_:
        cli.lightning_main(["fit", "--help"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the lightning command is also provided by other_pkg.cli:main")
    assert "ltu fit --config" in err
