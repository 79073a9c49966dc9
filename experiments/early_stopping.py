"""What stopping an unlearning fit after ``patience`` epochs without a better ``val/criterion``
would have changed, replayed from the logged curves of the equal-budget search's trials (tuning
seeds, validation criterion only; nothing is refitted).

For each logged fit: the kept criterion with every epoch (min of the start and all epochs) and
with early stopping (min of the start and the epochs up to the stop), and the epochs it runs.

    python experiments/early_stopping.py runs/search/fmnist5k --patience 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def curves(root: Path) -> dict[str, list[tuple[float, list[float]]]]:
    """method folder -> [(start criterion, per-epoch criteria)] of every logged fit under root."""
    out: dict[str, list[tuple[float, list[float]]]] = defaultdict(list)
    for events in sorted(root.glob("seed_*/*/trial_*/lightning_logs/version_*/events.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        if "val/criterion" not in tags:
            continue
        values = [e.value for e in acc.Scalars("val/criterion")]
        start = (
            acc.Scalars("val/criterion_start")[0].value
            if "val/criterion_start" in tags
            else float("inf")
        )
        out[events.parents[3].name].append((start, values))
    return out


def stop_epoch(values: list[float], patience: int) -> int:
    """Epochs run (1-based) under Lightning's ``EarlyStopping(mode="min", patience=patience)``."""
    best, wait = float("inf"), 0
    for epoch, value in enumerate(values, 1):
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    fits = curves(args.root)
    print(f"{sum(map(len, fits.values()))} logged fits of {len(fits)} rows under {args.root}\n")
    print(
        "| patience | fits whose kept criterion changes | mean change (all fits) | largest change | epochs run (share of all) |"
    )
    print("|---|---|---|---|---|")
    for p in args.patience:
        changed, deltas, run, total = 0, [], 0, 0
        for method_fits in fits.values():
            for start, values in method_fits:
                stop = stop_epoch(values, p)
                full = min([start, *values])
                early = min([start, *values[:stop]])
                deltas.append(early - full)
                changed += early > full
                run, total = run + stop, total + len(values)
        print(
            f"| {p} | {changed} / {len(deltas)} | {statistics.mean(deltas):+.3f} | "
            f"{max(deltas):+.3f} | {run / total:.0%} |"
        )
    print("\nper row at each patience: fits changed / fits, epochs run")
    for method, method_fits in sorted(fits.items()):
        cells = []
        for p in args.patience:
            stops = [stop_epoch(v, p) for _, v in method_fits]
            changed = sum(
                min([s, *v[:t]]) > min([s, *v])
                for (s, v), t in zip(method_fits, stops, strict=True)
            )
            share = sum(stops) / sum(len(v) for _, v in method_fits)
            cells.append(f"p{p}: {changed}/{len(method_fits)} {share:.0%}")
        print(f"{method:32s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
