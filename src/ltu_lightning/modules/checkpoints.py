"""Safe checkpoint reading: weights only, the split it was trained on, clear errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltu_lightning.errors import LTUError

SPLIT_KEY = "ltu_split"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``: an untrusted file cannot run code."""
    p = Path(path)
    if not p.is_file():
        raise LTUError(
            f"checkpoint {str(p)!r} does not exist; fix the path or run the stage that writes it first"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on garbage in many ways (EOF, zip, IndexError, ...)
        # The weights-only unpickler refuses globals (classes, functions: code); an opcode it
        # does not know means the file is no checkpoint at all.
        if isinstance(err, pickle.UnpicklingError) and "Unsupported operand" not in str(err):
            raise LTUError(
                f"checkpoint {str(p)!r} holds objects that are not plain weights and was refused "
                f"by weights-only loading ({_gist(err)}); only load checkpoints from sources you trust"
            ) from err
        raise LTUError(
            f"checkpoint {str(p)!r} is unreadable or truncated ({_gist(err)}); re-create it"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise LTUError(
            f"checkpoint {str(p)!r} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by ltu fit"
        )
    return ckpt


def _gist(err: Exception) -> str:
    """One line of a torch.load error (they run to paragraphs of advice): the reason only."""
    text = str(err).split("WeightsUnpickler error:")[-1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {line.split('. ')[0]}" if line else type(err).__name__


def checkpoint_split_id(ckpt: dict[str, Any]) -> str | None:
    return (ckpt.get(SPLIT_KEY) or {}).get("manifest_id")


def load_backbone_weights(
    backbone: nn.Module, path: str | os.PathLike, manifest_id: str | None, prefix: str = "backbone."
) -> dict[str, Any]:
    """Copy the backbone weights of a ClassifierModule checkpoint into ``backbone``.

    Refuses a checkpoint made on another split (when both sides know their split), and one whose
    weights do not fit the backbone (another architecture or number of classes).
    """
    ckpt = load_checkpoint(path)
    ckpt_split = checkpoint_split_id(ckpt)
    if manifest_id is not None and ckpt_split is not None and ckpt_split != manifest_id:
        raise LTUError(
            f"checkpoint {str(path)!r} was trained on split {ckpt_split}, but this run uses split {manifest_id}; "
            "point --data.manifest_path to the manifest the checkpoint was trained with"
        )
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LTUError(
            f"checkpoint {str(path)!r} does not match the backbone {type(backbone).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use the backbone it was trained with"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise LTUError(
                f"checkpoint {str(path)!r} has {key} of shape {tuple(value.shape)} but the backbone expects "
                f"{tuple(expected[key].shape)} (a different number of classes or width?); use the same backbone settings"
            )
    backbone.load_state_dict(state)
    return ckpt
