"""``UnlearningData``: what ``LTUModule``, the baselines and ``evaluate_unlearning`` need from a
data module, so that users can bring their own ``LightningDataModule`` instead of ours."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

#: Roles an unlearning ``fit`` reads through ``role_dataloader`` at its start: LTU's auditors'
#: members and non-members, the original validation accuracy (the criterion's reference) and
#: SalUn's saliency mask.
FIT_ROLES = ("retain_subset", "holdout_audit", "holdout_val", "forget")
#: Roles ``evaluate_unlearning`` reads (UA, RA, TA and the membership attacks).
EVALUATE_ROLES = ("forget", "remaining", "test")


@runtime_checkable
class UnlearningData(Protocol):
    """The data contract of the unlearning modules (``UnlearningDataModule`` is one example).

    A ``LightningDataModule`` with these members drops into ``LTUModule`` and the baselines
    (``UnlearningDataModule.wrap`` builds one from any ``LightningDataModule``):

    - ``train_on``: ``"unlearn"`` while unlearning (any other value is refused at fit set-up,
      so the same data module can also train the original model).
    - ``train_dataloader()``: batches ``{"forget": (x, y), "retain": (x, y)}``, e.g. a dict
      of two loaders (Lightning cycles the shorter one). ``retain`` comes from the retain
      subset D̂_r under partial access.
    - ``val_dataloader()``: one loader per name in ``val_roles``, in that order; the honest
      selection criterion needs ``["forget", "holdout_val"]``.
    - ``test_roles``: the names of ``test_dataloader()``'s loaders (``trainer.test`` logs
      ``test/acc_<role>``).
    - ``role_dataloader(role)``: an evaluation-order loader of ``(x, y)`` batches for each of
      ``FIT_ROLES`` (used at fit start) and ``EVALUATE_ROLES`` (used by ``evaluate_unlearning``).
      ``holdout_audit`` and ``holdout_val`` are the two halves of a holdout the original model
      never trained on: the auditors' non-members, and validation.
    - ``hparams``: ``hparams.get("forget_classes")`` lists the forgotten classes for class-wise
      forgetting (empty or missing for random forgetting); call ``save_hyperparameters()``.

    Optional: ``access`` names the retain data (``partial``, ``partial+holdout``, ``full``);
    ``LTUModule`` refuses ``partial``, which excludes the holdout its auditors read (a data
    module without ``access`` is taken to allow ``holdout_audit``, which it serves). A data
    module may read the fitted module's ``reads_holdout`` (true for LTU) to keep the holdout
    out of that method's retain batches, as ``UnlearningDataModule`` does under
    ``partial+holdout``. ``manifest_id`` (with a truthy ``manifest``) is recorded in checkpoints and
    checked against ``original_ckpt``; ``num_classes`` is checked against the baselines'
    ``num_classes``; ``role_dataset``, ``dataset_name`` and ``num_classes`` together let the
    modules check the backbone against the data at set-up.
    """

    train_on: str
    val_roles: Sequence[str]
    test_roles: Sequence[str]
    hparams: Any

    def role_dataloader(self, role: str) -> Iterable[tuple[Tensor, Tensor]]: ...

    def train_dataloader(self) -> Any: ...

    def val_dataloader(self) -> Any: ...
