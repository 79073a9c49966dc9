"""Module arguments through the CLI: short help, choices checked at parse time, the shared
arguments resolved through ``**kwargs``, and LTU's step knobs declared once."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import LTURunError
from ltu_lightning.errors import LTUError
from ltu_lightning.modules import LTUModule
from ltu_lightning.modules.baselines import FineTune
from ltu_lightning.networks import MLP
from ltu_lightning.optim import MetaHarmonizer
from ltu_lightning.optim.meta_harmonizer import MetaSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LTU = CONFIGS / "unlearn" / "ltu_fmnist5k.yaml"
#: every switch of LTUModule and the choices its help must list
CHOICES = {
    "remember_loss": "{ce,kd,ce_kd}",
    "forget_loss": "{mi,mi_match,mi_hinge,neg_ce,random_label,uniform_kl}",
    "stop_rule": "{criterion,budget,audit}",
    "meta_order": "{1,2}",
    "harmonization": "{symmetric,protect_remember,none}",
    "granularity": "{global,per_parameter}",
    "balance": "{none,clip}",
    "bn_mode": "{eval,train}",
}


def test_ltu_model_help_is_short_and_lists_every_choice(run_ltu, capsys):
    run_ltu(["fit", "--model.help", "LTUModule"])
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 200
    for name, choices in CHOICES.items():
        assert f"--model.{name} {choices}" in out, name
    assert "torch.nn.Linear" not in out  # the backbone does not enumerate every nn.Module


@pytest.mark.parametrize(
    ("name", "typo"),
    [
        ("harmonization", "symetric"),
        ("forget_loss", "mii"),
        ("remember_loss", "kld"),
        ("bn_mode", "frozen"),
        ("stop_rule", "best"),
    ],
)
def test_a_misspelt_choice_fails_at_parse_time_naming_the_choices(name, typo, in_tmp, run_ltu):
    with pytest.raises(LTURunError) as err:
        run_ltu(["fit", "--config", LTU, f"--model.init_args.{name}", typo])
    assert err.value.code not in (0, None)
    choices = CHOICES[name].strip("{}").split(",")
    assert typo in err.value.stderr and all(repr(c) in err.value.stderr for c in choices)
    assert not (in_tmp / "runs").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("name", "own"),
    [
        ("SalUn", ("sparsity", "generator_seed")),
        (
            "LUR",
            (
                "inner_lr",
                "forget_weight",
                "inner_objective {forget,retain}",
                "meta_order {1,2}",
                "forget_loss {random_label,neg_ce,uniform_kl}",
                "sparsity",
                "generator_seed",
            ),
        ),  # fmt: skip
    ],
)
def test_a_baseline_help_lists_its_own_and_the_shared_arguments(name, own, run_ltu, capsys):
    run_ltu(["fit", "--model.help", name])
    out = capsys.readouterr().out
    for arg in (*own, "backbone", "original_ckpt", "num_classes"):
        # an argument with choices is listed with them, the others with their metavar
        assert f"--model.{arg}{'' if ' {' in arg else ' '}" in out, arg
    assert "--model.stop_rule {criterion,budget}" in out


def test_any_nn_module_is_a_backbone_by_full_class_path(in_tmp, run_ltu, capsys):
    linear = {
        "class_path": "torch.nn.Linear",
        "init_args": {"in_features": 784, "out_features": 10},
    }
    run_ltu(
        ["fit", "--config", LTU, "--model.init_args.backbone", json.dumps(linear), "--print_config"]
    )
    assert "class_path: torch.nn.Linear" in capsys.readouterr().out
    model = FineTune(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))  # and from Python
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_ltu_step_knobs_have_one_declaration_and_one_set_of_defaults():
    backbone = MLP(num_classes=10, in_features=64, hidden=[8])
    model = LTUModule(backbone, inner_lr=0.1, meta_order=2)
    assert model.meta_settings == MetaSettings(inner_lr=0.1, meta_order=2)
    assert model.hparams.inner_lr == 0.1 and model.hparams.bn_mode == MetaSettings().bn_mode
    harmonizer = MetaHarmonizer(backbone, torch.optim.SGD(backbone.parameters(), lr=0.1))
    assert harmonizer.settings == LTUModule(backbone).meta_settings == MetaSettings()


def test_the_step_knobs_are_declared_only_in_meta_settings():
    knobs = {f.name for f in fields(MetaSettings)}
    for init in (LTUModule.__init__, MetaHarmonizer.__init__):
        assert not knobs & set(inspect.signature(init).parameters), init.__qualname__
    backbone = MLP(num_classes=10, in_features=64, hidden=[8])
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1)
    with pytest.raises(LTUError, match="not both; got settings and inner_lr"):
        MetaHarmonizer(backbone, opt, MetaSettings(), inner_lr=0.1)
