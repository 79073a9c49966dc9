"""The unlearning baselines, one file per method, on the shared ``BaselineModule``.

Every baseline starts from the original checkpoint, trains on the unlearning batches
``{"forget": (x, y), "retain": (x, y)}`` (``retain`` comes from the retain subset D̂_r under
``access: partial``, from D̂_r and the auditor half of the holdout under
``access: partial+holdout``, the images LTU reads, and from the whole remaining set D_r under
``access: full``), logs its training losses under ``train/`` and is selected by the same honest
``val/criterion`` as LTU (docs/protocol.md). Under ``partial+holdout`` a baseline uses the
holdout half exactly as its retain data (last column). A new method is one file here plus one
config (docs/architecture.md).

=================  =====================================================  =====================
class              method                                                 holdout half (under
                                                                          ``partial+holdout``)
=================  =====================================================  =====================
``FineTune``       FT (``ft.py``): CE on retain batches.                  CE on its labels
``GradientAscent`` GA (``ga.py``): −CE on forget batches (retain batches  loaded, not used
                   are not used).
``RandomLabel``    RL (``rl.py``): forget samples relabelled with a       CE on its labels
                   random *wrong* class, CE on the union of the
                   relabelled forget batch and the retain batch.
``NegGradPlus``    NegGrad+ (``neggrad_plus.py``): α·CE(retain) −         in the α·CE term
                   (1−α)·CE(forget), jointly.
``L1Sparse``       l1-sparse (``l1_sparse.py``): FT + α_t·‖θ‖₁, α_t       CE on its labels
                   decaying linearly to 0.
``SalUn``          SalUn (``salun.py``): saliency mask (top ``sparsity``  CE on its labels (the
                   fraction of |∇θ CE(D_f)|, computed once at fit         mask is from D_f
                   start), then RL on the masked weights.                 only)
``SCRUB``          SCRUB (``scrub.py``): student/teacher distillation     min-steps: KL to the
                   with max-steps on D_f (first ``max_steps`` epochs)     original and CE on
                   and min-steps on the retain data.                      its labels
``BadTeacher``     Bad Teaching (``bad_teacher.py``): distil the          distilled from the
                   original on the retain data and a randomly             original (labels
                   initialised network on D_f.                            unused)
``LUR``            LUR (``lur.py``): λ·L_u(θ) + CE_r(θ −                  CE on its labels (the
                   α·m⊙∇L_u(θ)), the retain loss after a virtual          mask is from D_f
                   unlearning step (first order by default), on SalUn's   only)
                   mask m and random labels; its open choices are
                   arguments (docs/protocol.md, "LUR").
=================  =====================================================  =====================
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
