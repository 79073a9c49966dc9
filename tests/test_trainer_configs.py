"""configs/trainer/*.yaml are trainer-only fragments that compose with any stage's config.

Every fragment is checked with ``--print_config`` after a pretrain and an unlearning config (the
GPU ones cannot run here); ``cpu.yaml`` trains a tiny original model, and ``ddp_cpu.yaml`` runs
that model's LTU unlearning in 2 real CPU processes through ``python -m ltu_lightning``, once
with its ``ddp`` (Lightning starts the second process by re-running the command) and once with
``ddp_spawn`` (the module, data and trainer are pickled into spawned processes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAINER = REPO / "configs" / "trainer"
FRAGMENTS = sorted(p.stem for p in TRAINER.glob("*.yaml"))
PRETRAIN = REPO / "configs" / "pretrain" / "fmnist5k.yaml"
LTU = REPO / "configs" / "unlearn" / "ltu_fmnist5k.yaml"
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--data.batch_size", "8",
]  # fmt: skip


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_fragments_are_there_and_trainer_only() -> None:
    assert FRAGMENTS == ["cpu", "ddp", "ddp_cpu", "gpu"]
    for stem in FRAGMENTS:
        assert list(load_yaml(TRAINER / f"{stem}.yaml")) == ["trainer"], stem


@pytest.mark.parametrize("stage", [PRETRAIN, LTU], ids=lambda p: p.stem)
@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_fragment_overrides_only_the_trainer(fragment, stage, in_tmp, run_ltu, capsys) -> None:
    capsys.readouterr()
    run_ltu(["fit", "--config", stage, "--config", TRAINER / f"{fragment}.yaml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    original = load_yaml(stage)
    for key, value in load_yaml(TRAINER / f"{fragment}.yaml")["trainer"].items():
        assert printed["trainer"][key] == value, key
    # the stage's own settings survive
    assert printed["trainer"]["max_epochs"] == original["trainer"]["max_epochs"]
    assert printed["trainer"]["default_root_dir"] == original["trainer"]["default_root_dir"]
    assert printed["model"]["class_path"].endswith(original["model"]["class_path"])
    assert printed["data"]["init_args"]["train_on"] == original["data"]["init_args"]["train_on"]
    assert not (in_tmp / "runs").exists()


def test_cpu_then_ddp_cpu_unlearning_runs_in_two_processes(in_tmp, run_ltu) -> None:
    run_ltu(["fit", "--config", PRETRAIN, "--config", TRAINER / "cpu.yaml", *TINY])
    original = in_tmp / "runs" / "fmnist5k" / "original" / "checkpoints" / "last.ckpt"
    assert original.is_file()

    for strategy in ("ddp", "ddp_spawn"):  # the fragment's, and the one that pickles the run
        run_dir = in_tmp / "runs" / strategy
        command = [sys.executable, "-m", "ltu_lightning", "fit", "--config", str(LTU)]
        command += ["--config", str(TRAINER / "ddp_cpu.yaml"), *TINY]
        command += ["--trainer.strategy", strategy, "--trainer.default_root_dir", str(run_dir)]
        command += ["--model.init_args.auditor_epochs", "10"]
        result = subprocess.run(command, cwd=in_tmp, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        for rank in (0, 1):
            assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in result.stderr, strategy
        assert (run_dir / "checkpoints" / "last.ckpt").is_file(), strategy
        saved = [load_yaml(p)["trainer"] for p in run_dir.rglob("config.yaml")]
        assert saved and all(t["strategy"] == strategy and t["devices"] == 2 for t in saved)
