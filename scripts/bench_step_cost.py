"""Cost of one LTU step (``MetaHarmonizer.step``) relative to one plain fine-tuning step.

Random data (nothing downloads; step cost does not depend on the pixels). ``--batch B`` means
what ``--data.batch_size B`` means for ``LTUModule``: the retain batch and the forget batch hold
B samples each, each split into support and query halves of B/2, so one LTU step forwards 2B
samples at θ and at θ'. The fine-tuning step is cross-entropy, backward and SGD on the B retain
samples (the ``FineTune`` baseline's step at the same batch size). Times are per step after
``--warmup`` steps (CUDA events on a GPU, ``perf_counter`` on the CPU); peak memory is
``torch.cuda.max_memory_allocated`` (model, optimizer state and activations; GPU only).
On a GPU, ``host syncs/step`` counts the calls per step that make the host wait for the device
(``torch.cuda.set_sync_debug_mode("warn")`` flags each one): the functional meta step should
queue its work without waiting, apart from the one deliberate read-back of its step statistics
(losses, norms: the non-finite check before the update is applied).
``ATen ops/step`` counts the operators one step dispatches (views left out), on any device: a
GPU pays about one kernel launch for each, so where launches dominate (small batches, many
parameter tensors) it tells what a step costs there.

``--ddp-check`` instead runs the multi-process rule on 2 processes (NCCL on 2 GPUs, gloo on the
CPU), float64: each rank steps on its half of the global batch, and the result must equal one
process on the whole batch. On GPUs it also tries ``bn_mode="train"`` with ``SyncBatchNorm``.

    python scripts/bench_step_cost.py --model resnet18 --batch 128 --device cuda
    python scripts/bench_step_cost.py --model small_cnn --batch 64 --device cpu --steps 10
    python scripts/bench_step_cost.py --ddp-check --model resnet18 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from ltu_lightning.errors import NonFiniteStepError
from ltu_lightning.modules.unlearning import UnlearningModule
from ltu_lightning.networks import CifarResNet18, SmallCNN
from ltu_lightning.optim import MetaHarmonizer

#: name -> (model factory, input shape)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "small_cnn": (SmallCNN, (1, 28, 28)),
    "resnet18": (CifarResNet18, (3, 32, 32)),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
LR = 1e-4  # small: random labels and gradient ascent must not overflow during the timing
Batch = tuple[Tensor, Tensor]


def remember_loss(forward: Callable[[Tensor], Tensor], batch: Batch) -> Tensor:
    return F.cross_entropy(forward(batch[0]).float(), batch[1])


def forget_loss(forward: Callable[[Tensor], Tensor], batch: Batch) -> Tensor:
    """``uniform_kl`` (bounded, so the timed steps stay finite on random data; gradient ascent
    diverges within a few dozen steps there); the default ``mi`` loss adds only a tiny auditor
    MLP on the logits."""
    log_p = F.log_softmax(forward(batch[0]).float(), dim=1)
    return -log_p.mean(dim=1).mean() - torch.log(torch.tensor(float(log_p.shape[1])))


def make_model(name: str, device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]().to(device)


def random_batch(name: str, size: int, device: torch.device, generator: torch.Generator) -> Batch:
    x = torch.randn(size, *MODELS[name][1], generator=generator)
    return x.to(device), torch.randint(0, 10, (size,), generator=generator).to(device)


def ltu_batches(retain: Batch, forget: Batch) -> list[Batch]:
    """``[S_r, Q_r, S_f, Q_f]`` as ``LTUModule.training_step`` splits them."""
    support_r, query_r = UnlearningModule.split_support_query(retain)
    support_f, query_f = UnlearningModule.split_support_query(forget)
    return [support_r, query_r, support_f, query_f]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], Any], steps: int, warmup: int, device: torch.device
) -> tuple[list[float], float | None]:
    """Milliseconds of each of ``steps`` steps after ``warmup`` ones, and the peak MiB (GPU)."""
    for i in range(warmup):
        try:
            step()
        except NonFiniteStepError as err:
            raise NonFiniteStepError(f"warm-up step {i + 1}: {err}") from err
    synchronize(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        if cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return times, peak


def host_syncs_per_step(
    step: Callable[[], Any], device: torch.device, steps: int = 3
) -> float | None:
    """Synchronizing CUDA calls per step (after one uncounted step); None off the GPU."""
    if device.type != "cuda":
        return None
    step()
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched inside it, views left out."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def ops_per_step(step: Callable[[], Any]) -> int:
    """ATen operators (views left out) that one ``step`` dispatches, after one uncounted step."""
    step()
    counter = _CountOps()
    with counter:
        step()
    return counter.ops


def make_step(
    kind: str, model: nn.Module, dtype: torch.dtype | None, retain: Batch, forget: Batch
) -> Callable[[], None]:
    """One ``finetune`` or ``ltu_order{1,2}`` step of ``model`` under autocast to ``dtype``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    device_type = retain[0].device.type

    def autocast() -> Any:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=dtype)

    if kind == "finetune":

        def finetune() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(retain[0]).float(), retain[1])
            loss.backward()
            optimizer.step()

        return finetune
    # As under Lightning's bf16-mixed: the whole training_step runs inside autocast.
    harmonizer = MetaHarmonizer(model, optimizer, meta_order=int(kind.removeprefix("ltu_order")))
    batches = ltu_batches(retain, forget)

    def ltu() -> None:
        with autocast():
            harmonizer.step(remember_loss, forget_loss, *batches)

    return ltu


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """One row per (dtype, step kind): milliseconds per step, ratio to fine-tuning, peak MiB."""
    generator = torch.Generator().manual_seed(0)
    retain = random_batch(args.model, args.batch, device, generator)
    forget = random_batch(args.model, args.batch, device, generator)
    rows = []
    for dtype_name in args.dtypes:
        finetune_ms = None
        for kind in ["finetune", *(f"ltu_order{o}" for o in args.orders)]:
            model = make_model(args.model, device).train()
            step = make_step(kind, model, DTYPES[dtype_name], retain, forget)
            row: dict[str, Any] = {
                "model": args.model,
                "batch": args.batch,
                "device": device.type,
                "dtype": dtype_name,
                "step": kind,
            }
            try:
                times, peak = time_steps(step, args.steps, args.warmup, device)
            except NonFiniteStepError as err:  # reported as a row: the table is the finding
                print(f"{args.model} {dtype_name} {kind}: {err}")
                nan = float("nan")
                rows.append(
                    {**row, "ms_median": nan, "ms_mean": nan, "x_finetune": nan, "steps": 0,
                     "peak_mib": None, "host_syncs_per_step": None, "ops_per_step": None,
                     "error": str(err)}
                )  # fmt: skip
                continue
            # a fresh model: the timed steps may have driven the forgetting term far already
            fresh = make_step(
                kind, make_model(args.model, device).train(), DTYPES[dtype_name], retain, forget
            )
            median = statistics.median(times)
            finetune_ms = finetune_ms or median
            rows.append(
                {
                    **row,
                    "ms_median": median,
                    "ms_mean": statistics.fmean(times),
                    "x_finetune": median / finetune_ms,
                    "steps": len(times),
                    "peak_mib": peak,
                    "host_syncs_per_step": host_syncs_per_step(fresh, device),
                    "ops_per_step": ops_per_step(fresh),
                }
            )
            del model, step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | batch | device | dtype | step | ms/step (median) | × fine-tune | peak MiB "
        "| host syncs/step | ATen ops/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        syncs = "n/a" if r["host_syncs_per_step"] is None else f"{r['host_syncs_per_step']:g}"
        ops = "n/a" if r.get("ops_per_step") is None else str(r["ops_per_step"])
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['device']} | {r['dtype']} | {r['step']} | "
            f"{r['ms_median']:.1f} | {r['x_finetune']:.2f} | {peak} | {syncs} | {ops} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------- multi-process rule
WORLD = 2
DDP_STEPS = 3
#: (name, bn_mode, meta_order, SyncBatchNorm); SyncBatchNorm runs on GPUs only
DDP_CASES = [
    ("bn_eval_order1", "eval", 1, False),
    ("bn_eval_order2", "eval", 2, False),
    ("bn_train_syncbn_order1", "train", 1, True),
    ("bn_train_syncbn_order2", "train", 2, True),
]


def _deterministic() -> None:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _train(
    model_name: str, case: tuple, device: torch.device, batch: int, rank: int | None
) -> Tensor:
    """``DDP_STEPS`` LTU steps on the global batches (``rank=None``) or on this rank's half.

    In float64: at a random init g_r and g_f are nearly opposite, and projecting one on the
    other would turn float32 rounding (a batch of B vs two of B/2) into visible differences.
    """
    _, bn_mode, order, sync = case
    model = make_model(model_name, device).double().train()
    if sync and rank is not None:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    harmonizer = MetaHarmonizer(model, optimizer, meta_order=order, bn_mode=bn_mode)
    generator = torch.Generator().manual_seed(1)
    for _ in range(DDP_STEPS):
        retain, forget = (random_batch(model_name, batch, device, generator) for _ in range(2))
        parts = [(x.double(), y) for x, y in ltu_batches(retain, forget)]
        if rank is not None:  # this rank's share of each global support and query batch
            parts = [(x[rank::WORLD], y[rank::WORLD]) for x, y in parts]
        harmonizer.step(remember_loss, forget_loss, *parts)
    state = [t.detach().double().reshape(-1) for t in model.state_dict().values()]
    return torch.cat(state).cpu()


def _ddp_worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        _deterministic()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    results: dict[str, Any] = {}
    try:
        for case in DDP_CASES:
            if case[3] and not cuda:
                continue
            try:
                results[case[0]] = _train(args.model, case, device, args.batch, rank)
            except RuntimeError as err:  # the same error on every rank: no collective hangs
                results[case[0]] = str(err).splitlines()[0]
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_check(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Rows: ranks identical, and the largest difference to one process relative to the update."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _ddp_worker,
            args=(args, find_free_network_port(), tmp),
            nprocs=WORLD,
            start_method="spawn",
        )
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]
    if device.type == "cuda":
        _deterministic()
    initial = make_model(args.model, device).double().state_dict().values()
    start = torch.cat([t.double().reshape(-1) for t in initial]).cpu()
    rows = []
    for case in DDP_CASES:
        name = case[0]
        if name not in ranks[0]:
            continue
        row: dict[str, Any] = {"case": name, "model": args.model, "batch": args.batch}
        if isinstance(ranks[0][name], str):
            row.update(ok=False, error=ranks[0][name])
        else:
            single = _train(args.model, case, device, args.batch, rank=None)
            rel = (ranks[0][name] - single).abs().max() / (single - start).abs().max()
            identical = all(torch.equal(ranks[0][name], r[name]) for r in ranks[1:])
            row.update(ranks_identical=identical, rel_diff_to_one_process=rel.item())
            row["ok"] = identical and rel.item() < args.ddp_tolerance
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    parser.add_argument("--batch", type=int, default=64, help="samples per stream (see above)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--orders", nargs="+", type=int, choices=[1, 2], default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--ddp-check", action="store_true", help="run the 2-process check")
    parser.add_argument("--ddp-tolerance", type=float, default=1e-6)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    threads = torch.get_num_threads()
    print(f"# {name or platform.machine()}, torch {torch.__version__}, {threads} CPU threads")
    if args.ddp_check:
        rows = ddp_check(args, device)
        for row in rows:
            print(json.dumps(row))
        failed = [r["case"] for r in rows if not r["ok"] and r["case"].startswith("bn_eval")]
    else:
        rows = bench(args, device)
        print(markdown(rows))
        failed = []
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        raise SystemExit(f"multi-process rule violated: {', '.join(failed)}")


if __name__ == "__main__":
    main()
