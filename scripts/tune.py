"""Choose each method's hyperparameters on the validation holdout (never the test split).

    python scripts/tune.py --benchmark configs/benchmark/fmnist5k.yaml \
        --grid configs/tuning/fmnist5k.yaml --seeds 0 1 2 --out runs/tune/fmnist5k

The grid YAML maps a method key of the benchmark to ``{ltu fit flag: [values]}``; the chosen
values are then written into the method's stage config by hand (they live in configs/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ltu_lightning.benchmark.cli import build_parser
from ltu_lightning.benchmark.runner import load_benchmark
from ltu_lightning.benchmark.tuning import tune, tuning_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--grid", required=True)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="score = mean over these seeds"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None, help="method keys to tune")
    args = parser.parse_args()
    bench = load_benchmark(build_parser().parse_args(["--config", args.benchmark]))
    grids = yaml.safe_load(Path(args.grid).read_text())
    if args.only:
        grids = {k: v for k, v in grids.items() if k in args.only}
    report = tune(bench, grids, args.seeds, args.out, progress=lambda s: print(s, flush=True))
    text = tuning_markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuning.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
