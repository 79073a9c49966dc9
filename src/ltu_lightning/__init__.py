"""Learning to Unlearn (LTU) and machine-unlearning baselines as PyTorch Lightning modules.

The public API, for use in a user's own Lightning project:

- data: ``UnlearningDataModule`` (datasets by name, the saved split, a loader per role; a
  user's own datasets through ``UnlearningDataModule.from_split`` and a user's own
  ``LightningDataModule`` through ``UnlearningDataModule.wrap``) and ``UnlearningData``, the
  protocol a hand-written data module follows instead;
- LightningModules: ``ClassifierModule`` (original model and retrain), ``LTUModule``, the
  baselines ``FineTune``, ``GradientAscent``, ``RandomLabel``, ``NegGradPlus``, ``L1Sparse``,
  ``SalUn``, ``SCRUB``, ``BadTeacher``, ``LUR``, and their base ``UnlearningModule``;
- plain-torch LTU parts: ``MetaHarmonizer`` (one LTU step inside any ``training_step``),
  ``harmonize``, ``AuditorEnsemble`` and ``make_forget_loss``;
- ``evaluate_unlearning`` (the protocol's metrics), ``load_unlearned_weights`` (a network's
  weights from a checkpoint), ``RunFolderGuard`` (refuses to overwrite earlier runs),
  ``ZeroSubnormals`` (keeps decayed weights from slowing CPU steps), ``LTUError``,
  ``__version__``.

Each name is imported on first use (PEP 562): ``import ltu_lightning``, which also runs first
for every ``ltu_lightning.<submodule>`` import, stays cheap and does not load torch or Lightning.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__: str = version("ltu-lightning")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "LUR",
    "SCRUB",
    "AuditorEnsemble",
    "BadTeacher",
    "ClassifierModule",
    "FineTune",
    "GradientAscent",
    "L1Sparse",
    "LTUError",
    "LTUModule",
    "MetaHarmonizer",
    "NegGradPlus",
    "RandomLabel",
    "RunFolderGuard",
    "SalUn",
    "UnlearningData",
    "UnlearningDataModule",
    "UnlearningModule",
    "ZeroSubnormals",
    "__version__",
    "evaluate_unlearning",
    "harmonize",
    "load_unlearned_weights",
    "make_forget_loss",
]

#: public name -> the module that defines it (the same pairs as the TYPE_CHECKING imports)
_SOURCES = {
    "UnlearningDataModule": "ltu_lightning.data.datamodule",
    "UnlearningData": "ltu_lightning.data.protocol",
    "ClassifierModule": "ltu_lightning.modules.classifier",
    "UnlearningModule": "ltu_lightning.modules.unlearning",
    "LTUModule": "ltu_lightning.modules.ltu",
    "FineTune": "ltu_lightning.modules.baselines",
    "GradientAscent": "ltu_lightning.modules.baselines",
    "RandomLabel": "ltu_lightning.modules.baselines",
    "NegGradPlus": "ltu_lightning.modules.baselines",
    "L1Sparse": "ltu_lightning.modules.baselines",
    "SalUn": "ltu_lightning.modules.baselines",
    "SCRUB": "ltu_lightning.modules.baselines",
    "BadTeacher": "ltu_lightning.modules.baselines",
    "LUR": "ltu_lightning.modules.baselines",
    "MetaHarmonizer": "ltu_lightning.optim.meta_harmonizer",
    "harmonize": "ltu_lightning.optim.harmonize",
    "AuditorEnsemble": "ltu_lightning.audit.auditors",
    "make_forget_loss": "ltu_lightning.audit.forget_losses",
    "evaluate_unlearning": "ltu_lightning.evaluation.protocol",
    "LTUError": "ltu_lightning.errors",
    "RunFolderGuard": "ltu_lightning.modules.base",
    "load_unlearned_weights": "ltu_lightning.modules.checkpoints",
    "ZeroSubnormals": "ltu_lightning.modules.base",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports lazily
    from ltu_lightning.audit.auditors import AuditorEnsemble
    from ltu_lightning.audit.forget_losses import make_forget_loss
    from ltu_lightning.data.datamodule import UnlearningDataModule
    from ltu_lightning.data.protocol import UnlearningData
    from ltu_lightning.errors import LTUError
    from ltu_lightning.evaluation.protocol import evaluate_unlearning
    from ltu_lightning.modules.base import RunFolderGuard, ZeroSubnormals
    from ltu_lightning.modules.baselines import (
        LUR,
        SCRUB,
        BadTeacher,
        FineTune,
        GradientAscent,
        L1Sparse,
        NegGradPlus,
        RandomLabel,
        SalUn,
    )
    from ltu_lightning.modules.checkpoints import load_unlearned_weights
    from ltu_lightning.modules.classifier import ClassifierModule
    from ltu_lightning.modules.ltu import LTUModule
    from ltu_lightning.modules.unlearning import UnlearningModule
    from ltu_lightning.optim.harmonize import harmonize
    from ltu_lightning.optim.meta_harmonizer import MetaHarmonizer


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'ltu_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    """Let ``dir()`` and tab completion list the lazy names too."""
    return sorted({*globals(), *__all__})
