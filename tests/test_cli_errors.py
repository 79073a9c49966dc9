"""A parse error of the ltu CLI is one line naming the flag and the fix, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltu_lightning.cli import main
from ltu_lightning.runner.lightning import one_line_parse_error

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "unlearn" / "ltu_digits.yaml")


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", CONFIG, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_misspelt_choice_names_the_flag_and_the_choices(capsys) -> None:
    line = _error(capsys, "--model.init_args.harmonization", "symetric")
    assert line.startswith("error: --model.init_args.harmonization: 'symetric' is not one of")
    assert "'symmetric', 'protect_remember', 'none'" in line
    assert "usage:" not in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--model.init_args.nosuch", "3"), "--model.init_args.nosuch: Option 'nosuch' is not"),
        (("--trainer.max_epochs", "abc"), "--trainer.max_epochs: Expected a <class 'int'>"),
    ],
)
def test_other_parse_errors_are_one_line(capsys, args, expected) -> None:
    line = _error(capsys, *args)
    assert expected in line
    assert line.endswith(" fit --help)")


def test_a_flat_message_keeps_its_first_line() -> None:
    assert one_line_parse_error("Key 'x' is required\n  more") == "Key 'x' is required"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("benchmark", "--config", "nope.yaml"), 'Parser key "config": File does not exist'),
        (("benchmark", "--seeds", "x"), "--seeds: Expected a <class 'int'>"),
        (("audit", "--audits", "inversion", "--nosuch", "1"), "unrecognized arguments: --nosuch"),
        (("tune", "--benchmark", "b.yaml", "--out", "o", "--trials", "x"), "--trials: Expected"),
    ],
)
def test_a_parse_error_of_benchmark_tune_and_audit_is_one_line(capsys, args, expected) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "usage:" not in err[0], err
    assert err[0].startswith("error: ") and expected in err[0], err
    assert err[0].endswith(f" {args[0]} --help)")
