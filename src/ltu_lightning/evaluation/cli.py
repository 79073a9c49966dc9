"""``ltu evaluate``: the protocol's metrics for one checkpoint on one split manifest.

    ltu evaluate --config configs/unlearn/ltu_fmnist5k.yaml \
        --ckpt_path runs/fmnist5k/ltu/checkpoints/best.ckpt [--reference retrain.json] [--output m.json]

The model and data come from the same YAML as ``ltu fit``; the data module loads the split
manifest and refuses a checkpoint trained on another split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.metrics import avg_gap
from ltu_lightning.evaluation.protocol import evaluate_unlearning, forgetting_verdict, verdict
from ltu_lightning.modules.checkpoints import load_backbone_weights
from ltu_lightning.tracking import update_wandb_summary
from ltu_lightning.utils.files import write_json_atomic


def evaluate_checkpoint(
    model, datamodule, ckpt_path: str | None, seed: int = 0
) -> dict[str, float]:
    """Load ``ckpt_path`` into ``model.backbone`` (split checked) and evaluate it."""
    datamodule.setup("test")
    backbone = getattr(model, "backbone", model)
    if ckpt_path:
        load_backbone_weights(backbone, ckpt_path, datamodule.manifest_id)
    return evaluate_unlearning(backbone, datamodule, seed=seed)


def evaluate_main(args: list[str]) -> None:
    from ltu_lightning.cli import LTUCLI

    class EvaluateCLI(LTUCLI):
        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
            parser.add_argument(
                "--ckpt_path",
                type=str | None,
                default=None,
                help="checkpoint to evaluate (default: the model's initial weights)",
            )
            parser.add_argument(
                "--reference",
                type=str | None,
                default=None,
                help="metrics JSON of the retrained model, for Avg.Gap",
            )
            parser.add_argument(
                "--output", type=str | None, default=None, help="write the metrics JSON here"
            )

    cli = EvaluateCLI(args=args, run=False)
    cfg = cli.config
    metrics = evaluate_checkpoint(
        cli.model, cli.datamodule, cfg.ckpt_path, seed=cfg.seed_everything or 0
    )
    reference = None
    if cfg.reference:
        try:
            reference = json.loads(Path(cfg.reference).read_text())
        except (OSError, ValueError) as err:
            raise LTUError(
                f"cannot read reference metrics {cfg.reference!r} ({err}); pass a JSON written by ltu evaluate --output"
            ) from err
        metrics["avg_gap"] = avg_gap(metrics, reference)
    for key, value in metrics.items():
        print(f"{key:>22}: {value:.4f}")
    print(verdict(metrics, reference))
    if cfg.output:
        write_json_atomic(cfg.output, metrics)
    log_evaluation(cli, metrics)


def log_evaluation(cli: Any, metrics: dict[str, float]) -> None:
    """Send an evaluation to the trainer's loggers as ``eval/<metric>`` (W&B: also the run
    summary, with ``eval/verdict``), with the resolved config as hyperparameters."""
    loggers = cli.trainer.loggers
    if not loggers:
        return
    cli.prepare_run(cli.config)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    scores = {f"eval/{k}": float(v) for k, v in metrics.items()}
    for logger in loggers:
        logger.log_hyperparams(config)
        logger.log_metrics(scores, step=0)
        logger.save()
    update_wandb_summary(loggers, {**scores, "eval/verdict": forgetting_verdict(metrics)})
    for logger in loggers:
        logger.finalize("success")
