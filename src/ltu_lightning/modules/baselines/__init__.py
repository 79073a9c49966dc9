"""The unlearning baselines, one file per method, on the shared ``BaselineModule``.

Every baseline starts from the original checkpoint, trains on the unlearning batches
``{"forget": (x, y), "retain": (x, y)}`` (``retain`` comes from the retain subset D̂_r under
``access: partial`` and from the whole remaining set D_r under ``access: full``), logs its
training losses under ``train/`` and is selected by the same honest ``val/criterion`` as LTU
(docs/protocol.md). A new method is one file here plus one config (docs/architecture.md).

=================  ====================================================================
``FineTune``       FT (``ft.py``): CE on retain batches.
``GradientAscent`` GA (``ga.py``): −CE on forget batches (retain batches are not used).
``RandomLabel``    RL (``rl.py``): forget samples relabelled with a random *wrong* class, CE
                   on the union of the relabelled forget batch and the retain batch.
``NegGradPlus``    NegGrad+ (``neggrad_plus.py``): α·CE(retain) − (1−α)·CE(forget), jointly.
``L1Sparse``       l1-sparse (``l1_sparse.py``): FT + α_t·‖θ‖₁, α_t decaying linearly to 0.
``SalUn``          SalUn (``salun.py``): saliency mask (top ``sparsity`` fraction of
                   |∇θ CE(D_f)|, computed once at fit start), then RL on the masked weights.
``SCRUB``          SCRUB (``scrub.py``): student/teacher distillation with max-steps on D_f
                   (first ``max_steps`` epochs) and min-steps on the retain data.
``BadTeacher``     Bad Teaching (``bad_teacher.py``): distil the original on the retain data
                   and a randomly initialised network on D_f.
``LUR``            LUR (``lur.py``): λ·L_u(θ) + CE_r(θ − α·m⊙∇L_u(θ)), the retain loss
                   taken after a virtual unlearning step (first order by default), on
                   SalUn's mask m and random labels; its open choices are arguments
                   (docs/protocol.md, "LUR").
=================  ====================================================================
"""

from ltu_lightning.modules.baselines.bad_teacher import BadTeacher
from ltu_lightning.modules.baselines.base import BaselineModule
from ltu_lightning.modules.baselines.ft import FineTune
from ltu_lightning.modules.baselines.ga import GradientAscent
from ltu_lightning.modules.baselines.l1_sparse import L1Sparse
from ltu_lightning.modules.baselines.lur import LUR
from ltu_lightning.modules.baselines.neggrad_plus import NegGradPlus
from ltu_lightning.modules.baselines.rl import RandomLabel
from ltu_lightning.modules.baselines.salun import SalUn
from ltu_lightning.modules.baselines.scrub import SCRUB

__all__ = [
    "LUR",
    "SCRUB",
    "BadTeacher",
    "BaselineModule",
    "FineTune",
    "GradientAscent",
    "L1Sparse",
    "NegGradPlus",
    "RandomLabel",
    "SalUn",
]
