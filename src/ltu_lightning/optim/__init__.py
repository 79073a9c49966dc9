"""Optimizer-level LTU components: gradient harmonization and the meta-harmonizer step."""

from ltu_lightning.optim.harmonize import balance_clip, gradient_stats, harmonize
from ltu_lightning.optim.meta_harmonizer import LossFn, MetaHarmonizer

__all__ = ["LossFn", "MetaHarmonizer", "balance_clip", "gradient_stats", "harmonize"]
