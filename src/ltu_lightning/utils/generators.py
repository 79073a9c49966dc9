"""Helpers that draw from their own ``torch.Generator``: checkpointable, picklable across
processes, and consistent under data parallelism."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class OwnGenerator:
    """Mixin for helpers that draw from their own CPU ``torch.Generator`` (``self.generator``,
    seeded in ``__init__``) rather than the global RNG:

    - ``state_dict``/``load_state_dict`` hold the generator's state, so a resumed run draws what
      an uninterrupted one would (``UnlearningModule`` checkpoints such helpers);
    - pickled as the plain bytes of that state: a generator sent to another process by torch's
      multiprocessing (as ``ddp_spawn`` sends the module) fails to rebuild there ("unable to
      resize file ... Invalid argument");
    - ``randint_share`` draws for the global batch of W ranks and keeps this rank's share,
      positions ``rank, rank + W, …``: the interleaving in which ``DistributedSampler`` deals a
      permutation to the ranks, so N ranks draw what one process would for the global batch.
    """

    generator: torch.Generator

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        raw = state.pop("generator")
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))

    def randint_share(self, low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        """This rank's ``shape``-sized share of one draw for the global batch (advances the
        generator by the global draw on every rank, keeping them in step)."""
        world, rank = world_and_rank()
        draw = torch.randint(low, high, (shape[0] * world, *shape[1:]), generator=self.generator)
        return draw[rank::world]
