"""A SmallCNN training step on a checkpoint's weights, before and after their subnormal entries
are set to zero (what ``ZeroSubnormals`` does during every fit).

Prints how many weights are subnormal and the median milliseconds per training step (forward
and backward on random images, nothing downloads) for each; run with ``OMP_NUM_THREADS=1`` for
the one-core numbers of docs/benchmarks.md ("Speed").

    OMP_NUM_THREADS=1 python scripts/bench_subnormals.py --ckpt runs/.../checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ltu_lightning import load_unlearned_weights
from ltu_lightning.networks import SmallCNN
from ltu_lightning.optim.subnormals import count_subnormals, zero_subnormals_


def median_step_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, calls: int) -> float:
    times = []
    for _ in range(calls + 1):  # the first call warms up
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a stage's checkpoint of a SmallCNN")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    model = SmallCNN(
        num_classes=args.num_classes, in_channels=args.in_channels, image_size=args.image_size
    )
    load_unlearned_weights(model, args.ckpt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.in_channels, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
    total = sum(p.numel() for p in model.parameters())
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {total} weights")
    print("| weights | subnormal | ms per training step |")
    print("|---|---|---|")
    print(
        f"| as stored | {count_subnormals(model.parameters())} | {median_step_ms(model, x, y, args.calls):.1f} |"
    )
    zero_subnormals_(model.parameters())
    print(
        f"| subnormals zeroed | {count_subnormals(model.parameters())} | {median_step_ms(model, x, y, args.calls):.1f} |"
    )


if __name__ == "__main__":
    main()
