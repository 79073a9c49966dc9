"""An interrupted ``ltu benchmark`` continues with ``--resume``; a finished stage is never
replaced unless ``--overwrite`` asks, nor reused under other settings (a tiny class-wise digits
benchmark: GA for one epoch, one seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGITS = str(CONFIGS / "unlearn" / "datasets" / "digits.yaml")


def _refused(run_ltu, args: list[str]) -> str:
    """The one error line (exit status 2) with which ``ltu args`` refuses."""
    from conftest import LTURunError

    with pytest.raises(LTURunError) as err:
        run_ltu(args)
    lines = err.value.stderr.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def _stage_files(stage: Path) -> dict[str, bytes]:
    files = [stage / "metrics.json", *sorted((stage / "checkpoints").glob("*.ckpt"))]
    return {p.name: p.read_bytes() for p in files}


def test_a_finished_stage_is_reused_only_when_asked_and_only_under_its_settings(
    tmp_path: Path, capsys, run_ltu
) -> None:
    out = tmp_path / "out"
    config = {
        "name": "tiny",
        "original": str(CONFIGS / "pretrain" / "digits.yaml"),
        "retrain": str(CONFIGS / "retrain" / "digits.yaml"),
        "seeds": [0],
        "out": str(out),
        "overrides": {
            "trainer.max_epochs": 2,
            "data.init_args.forget_classes": [3],
            "data.init_args.forget_fraction": None,
        },
        "methods": [
            {"key": "ga:partial", "config": [str(CONFIGS / "unlearn" / "ga_fmnist5k.yaml"), DIGITS],
             "overrides": {"trainer.max_epochs": 1}},
        ],
    }  # fmt: skip
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump(config))
    args = ["benchmark", "--config", str(bench)]
    run_ltu(args)
    first = json.loads((out / "results.json").read_text())
    stage = out / "seed_0" / "ga_partial"
    kept = _stage_files(stage)
    assert json.loads(kept["metrics.json"])["recipe"]  # what the stage was fitted from

    # an interrupted run: its stages are stored, its report is not
    (out / "results.json").unlink()
    capsys.readouterr()
    line = _refused(run_ltu, args)
    assert f"{stage} holds stage 'ga:partial' of seed 0 from an earlier run" in line
    assert "--resume true" in line and "--overwrite true" in line
    assert _stage_files(stage) == kept

    run_ltu([*args, "--resume"])
    assert "ga:partial: reusing" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    for key in ("retrain", "ga:partial"):
        assert again["methods"][key]["avg_gap"] == first["methods"][key]["avg_gap"]
    assert _stage_files(stage) == kept

    # other settings for the row: not reused, not replaced
    (out / "results.json").unlink()
    tuned = tmp_path / "chosen.yaml"
    tuned.write_text(
        yaml.safe_dump({"ga:partial": {"model.init_args.optimizer.init_args.lr": 1e-4}})
    )
    line = _refused(run_ltu, [*args, "--resume", "--tuned", str(tuned)])
    assert "fitted with other configs or overrides than this run's" in line
    assert "--overwrite true" in line
    assert _stage_files(stage) == kept
    # other settings for every stage: the stored original is neither reused nor replaced
    original = (out / "seed_0" / "original" / "checkpoints" / "last.ckpt").read_bytes()
    line = _refused(run_ltu, [*args, "--resume", "--overrides", '{"trainer.max_epochs": 1}'])
    assert "holds the original model of seed 0 trained with other configs" in line
    assert (out / "seed_0" / "original" / "checkpoints" / "last.ckpt").read_bytes() == original

    # asked to, a finished stage is fitted again; a stage cut off before its metrics were
    # written is fitted again under --resume
    run_ltu([*args, "--overwrite", "--tuned", str(tuned)])
    assert "ga:partial: unlearning" in capsys.readouterr().out
    assert _stage_files(stage) != kept
    (out / "results.json").unlink()
    (stage / "metrics.json").unlink()
    run_ltu([*args, "--resume"])
    printed = capsys.readouterr().out
    assert "ga:partial: unlearning" in printed and "retrain: reusing" in printed
