"""Stages as values, built through the project's LightningCLI (no command line below ``ltu``)."""

from ltu_lightning.runner.lightning import ProjectCLI
from ltu_lightning.runner.stage import FitResult, Stage, StageCLI, nested, selected_checkpoint

__all__ = ["FitResult", "ProjectCLI", "Stage", "StageCLI", "nested", "selected_checkpoint"]
