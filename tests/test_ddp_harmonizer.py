"""Multi-process rule: N ranks on shards of a global batch take the same steps as one process.

Two gloo processes (CPU) are spawned once per module; the workers write their results to
``tmp_path`` and the assertions run in the parent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from torch import Tensor, nn

from ltu_lightning.optim import MetaHarmonizer, harmonize
from spawned import run_spawned

WORLD = 2
STEPS = 3
PER_RANK = 4
CONFIGS: dict[str, dict] = {
    "meta_first_order": dict(meta_order=1, inner_lr=0.5, inner_steps=2),
    "meta_second_order": dict(
        meta_order=2, inner_lr=0.5, granularity="per_parameter", balance="clip", balance_c=0.5
    ),
    "joint": dict(meta=False, harmonization="protect_remember"),
}
# Per-rank (remember, forget) inputs for a linear model whose loss is the mean output, so the
# gradients are the means of the inputs: globally g_r = (1, 0) and g_f = (-1, 0) cancel
# exactly, while rank 1 alone has a partial conflict and rank 0 none.
CONFLICT_INPUTS = [
    (torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])),
    (torch.tensor([[1.0, 0.0]]), torch.tensor([[-2.0, -1.0]])),
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))


def remember_loss(forward, batch: tuple[Tensor, Tensor]) -> Tensor:
    return F.cross_entropy(forward(batch[0]), batch[1])


def forget_loss(forward, batch: tuple[Tensor, Tensor]) -> Tensor:
    return -F.cross_entropy(forward(batch[0]), batch[1])


def _global_batches(step: int) -> list[tuple[Tensor, Tensor]]:
    """``[S_r, Q_r, S_f, Q_f]`` of WORLD * PER_RANK samples each, forget near remember."""
    gen = torch.Generator().manual_seed(100 + step)
    n = WORLD * PER_RANK
    s_r, q_r = (
        (torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen))
        for _ in range(2)
    )
    s_f, q_f = ((x + 0.5 * torch.randn(n, 3, generator=gen), y) for x, y in (s_r, q_r))
    return [s_r, q_r, s_f, q_f]


def _train(kwargs: dict, rank: int | None) -> Tensor:
    """STEPS steps on the global batches (``rank=None``) or on this rank's shard of them."""
    model = _model()
    harmonizer = MetaHarmonizer(model, torch.optim.SGD(model.parameters(), lr=0.2), **kwargs)
    rows = slice(None) if rank is None else slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for step in range(STEPS):
        batches = [(x[rows], y[rows]) for x, y in _global_batches(step)]
        harmonizer.step(remember_loss, forget_loss, *batches)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _conflict_step(rank: int | None) -> Tensor:
    """One harmonized joint step (SGD lr 1) on CONFLICT_INPUTS; returns the update -Δw."""
    model = nn.Linear(2, 1, bias=False)
    before = model.weight.detach().clone()
    harmonizer = MetaHarmonizer(model, torch.optim.SGD(model.parameters(), lr=1.0), meta=False)
    ranks = range(WORLD) if rank is None else [rank]
    x_r = torch.cat([CONFLICT_INPUTS[r][0] for r in ranks])
    x_f = torch.cat([CONFLICT_INPUTS[r][1] for r in ranks])

    def mean_output(forward, x: Tensor) -> Tensor:
        return forward(x).mean()

    harmonizer.step(mean_output, mean_output, x_r, None, x_f, None)
    return (before - model.weight.detach()).reshape(-1)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # a TCP store on the loopback: the file:// store aborted (SIGABRT) on some CI machines
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    sizes: list[int] = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor: Tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        results: dict[str, object] = {}
        for name, kwargs in CONFIGS.items():
            sizes.clear()
            results[name] = _train(kwargs, rank)
            results[f"{name}_all_reduce_sizes"] = list(sizes)
        results["conflict"] = _conflict_step(rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    run_spawned(_worker, lambda: (find_free_network_port(), str(tmp)), WORLD, 120, tmp / "logs")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


#: one torch thread per test module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ranks_match_one_process_on_the_global_batch(rank_results: list[dict], name: str) -> None:
    rank0, rank1 = (r[name] for r in rank_results)
    assert torch.equal(rank0, rank1)
    single = _train(CONFIGS[name], rank=None)
    assert torch.allclose(rank0, single, atol=1e-5, rtol=0)
    assert not torch.allclose(single, _train(CONFIGS[name], rank=0), atol=1e-3)  # shards differ


def test_each_gradient_is_one_bucketed_all_reduce(rank_results: list[dict]) -> None:
    n_params = sum(p.numel() for p in _model().parameters())
    inner_steps = CONFIGS["meta_first_order"]["inner_steps"]
    sizes = rank_results[0]["meta_first_order_all_reduce_sizes"]
    # Per step: g_r and g_f of every inner step, then the outer g_r and g_f.
    assert sizes == [n_params] * (2 * (inner_steps + 1) * STEPS)
    assert rank_results[0]["joint_all_reduce_sizes"] == [n_params] * (2 * STEPS)


def test_harmonize_after_averaging_not_before(rank_results: list[dict]) -> None:
    per_rank = [harmonize(r.reshape(-1), f.reshape(-1)) for r, f in CONFLICT_INPUTS]
    averaged_after = torch.stack(per_rank).mean(0)
    global_h = harmonize(*(torch.cat(x).mean(0) for x in zip(*CONFLICT_INPUTS, strict=True)))
    assert torch.equal(global_h, torch.zeros(2))  # the global gradients cancel exactly
    assert torch.allclose(averaged_after, torch.tensor([0.6, -0.2]))  # the wrong algorithm
    for r in range(WORLD):
        assert torch.allclose(rank_results[r]["conflict"], global_h, atol=1e-6)
    assert torch.allclose(_conflict_step(rank=None), global_h, atol=1e-6)
