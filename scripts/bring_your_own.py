"""LTU and every baseline on the two foreign projects of the test suite (docs/bring_your_own.md).

    PYTHONPATH=src python scripts/bring_your_own.py --seeds 3 --epochs 10

The projects (``tests/foreign_projects.py``) are plain Lightning code that never imports this
package: a 3-class tabular task with an MLP, and 8x8 digits with a depthwise-separable conv net.
Per project the original model is trained once on the user's training set; per seed a random
10% of it is forgotten (``UnlearningDataModule.wrap(dm, forget=0.1, seed=seed)``), Retrain is
the same recipe on the remaining rows, and every method starts from the original with its
shipped defaults. The baselines read the forget set and the retain subset (``access="partial"``),
LTU also the auditor half of the holdout its auditors need (``access="partial+holdout"``). Printed: Avg.Gap to Retrain (mean ± std over seeds, per-seed values), the
loss-AUC and whether the start was kept (``no gain``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from foreign_projects import image_project, tabular_project, train  # noqa: E402
from ltu_lightning import (  # noqa: E402
    SCRUB,
    FineTune,
    GradientAscent,
    L1Sparse,
    LTUModule,
    NegGradPlus,
    RandomLabel,
    SalUn,
    UnlearningDataModule,
    evaluate_unlearning,
)
from ltu_lightning.evaluation.metrics import avg_gap  # noqa: E402

METHODS = (LTUModule, FineTune, GradientAscent, RandomLabel, NegGradPlus, L1Sparse, SalUn, SCRUB)
PROJECTS = {"tabular": (tabular_project, 25), "image": (image_project, 15)}


def run(project: str, seeds: int, epochs: int, root: Path) -> dict[str, list[dict[str, float]]]:
    make, train_epochs = PROJECTS[project]
    data, net = make()
    original = train(data, net, epochs=train_epochs)
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in range(seeds):
        by_access = {
            access: UnlearningDataModule.wrap(
                data,
                forget=0.1,
                seed=seed,
                access=access,
                manifest_path=str(root / f"{project}_{seed}.json"),
            )
            for access in ("partial", "partial+holdout")
        }
        dm = by_access["partial"]
        dm.setup()
        remaining = dm.role_indices("remaining").tolist()
        users_retrain = copy.copy(data)
        users_retrain.train_set = Subset(data.train_set, remaining)  # pool = train, then holdout
        retrain = train(users_retrain, make()[1], epochs=train_epochs, seed=seed)
        reference = evaluate_unlearning(retrain, dm, seed=seed)
        models = {"original": original, "retrain": retrain}
        for method in METHODS:
            L.seed_everything(seed)
            module = method(copy.deepcopy(original))
            L.Trainer(
                default_root_dir=root / project / method.__name__ / str(seed), max_epochs=epochs,
                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
            ).fit(module, by_access["partial+holdout" if method.reads_holdout else "partial"])  # fmt: skip
            models[method.__name__] = module.backbone
            rows.setdefault(f"{method.__name__} kept start", []).append(
                {"value": float(module.kept_epoch is None)}
            )
        for name, model in models.items():
            metrics = evaluate_unlearning(model, dm, seed=seed)
            metrics["avg_gap"] = avg_gap(metrics, reference)
            rows.setdefault(name, []).append(metrics)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="unlearning epochs of every method")
    parser.add_argument("--out", default="runs/bring_your_own")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for project in PROJECTS:
        rows = run(project, args.seeds, args.epochs, Path(args.out))
        print(f"\n## {project} ({args.seeds} seeds, {args.epochs} unlearning epochs)\n")
        print("| model | Avg.Gap | per seed | UA | TA | MIA | loss-AUC | start kept |")
        print("|---|---|---|---|---|---|---|---|")
        for name, runs in rows.items():
            if name.endswith("kept start"):
                continue
            gaps = np.array([r["avg_gap"] for r in runs])
            kept = rows.get(f"{name} kept start")
            mean = {k: np.mean([r[k] for r in runs]) for k in ("UA", "TA", "MIA", "loss_auc")}
            print(
                f"| {name} | {gaps.mean():.2f} ± {gaps.std(ddof=1) if len(gaps) > 1 else 0:.2f} "
                f"| {', '.join(f'{g:.2f}' for g in gaps)} | {mean['UA']:.1f} | {mean['TA']:.1f} "
                f"| {mean['MIA']:.1f} | {mean['loss_auc']:.3f} "
                f"| {int(sum(k['value'] for k in kept)) if kept else '-'} |"
            )


if __name__ == "__main__":
    main()
