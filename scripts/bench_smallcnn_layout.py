"""SmallCNN with channels-last activations (the shipped forward) against the plain NCHW forward.

Median milliseconds per call, on random 28×28 images (nothing downloads), for inference and for a
training step (forward, backward), at a few batch sizes; run with ``OMP_NUM_THREADS=1`` for the
one-core numbers of docs/benchmarks.md ("Speed").

    OMP_NUM_THREADS=1 python scripts/bench_smallcnn_layout.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ltu_lightning.networks import SmallCNN


class ContiguousSmallCNN(SmallCNN):
    """The same network, every activation in the default (NCHW-contiguous) layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def median_ms(model: torch.nn.Module, x: torch.Tensor, train: bool, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 500])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    shipped = SmallCNN()
    plain = ContiguousSmallCNN()
    plain.load_state_dict(shipped.state_dict())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| batch | mode | NCHW (ms) | channels-last (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for batch in args.batches:
        x = torch.randn(batch, 1, 28, 28)
        for train in (False, True):
            a = median_ms(plain, x, train, args.calls)
            b = median_ms(shipped, x, train, args.calls)
            mode = "train step" if train else "inference"
            print(f"| {batch} | {mode} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
