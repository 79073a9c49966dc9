"""Safe checkpoints: weights-only reading, the split they were trained on, finite weights,
atomic writes, and clear one-line errors."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from ltu_lightning.errors import LTUError, NonFiniteStepError
from ltu_lightning.utils.files import disk_error, write_atomic

SPLIT_KEY = "ltu_split"
#: state_dict prefix of the network every stage trains (``BaseModule.backbone``)
MODEL_PREFIX = "backbone."
#: no trained network has weights this large; a bit flip in a float's exponent gives ~1e38
HUGE_WEIGHT = 1e18
#: ``--ckpt_path`` values Lightning resolves itself (``registry:<name>`` included)
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")


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
        # A raw pickle (not torch.save's zip) fails on an opcode the weights-only unpickler
        # lacks before it reaches the globals: refused as code all the same.
        raw_pickle = _starts_with(p, b"\x80") and isinstance(err, pickle.UnpicklingError)
        if raw_pickle or (
            isinstance(err, pickle.UnpicklingError) and "Unsupported operand" not in str(err)
        ):
            gist = "a raw pickle, not torch.save's format" if raw_pickle else _gist(err)
            raise LTUError(
                f"checkpoint {str(p)!r} holds objects that are not plain weights and was refused "
                f"by weights-only loading ({gist}); only load checkpoints from sources you trust"
            ) from err
        raise LTUError(
            f"checkpoint {str(p)!r} is unreadable or truncated ({_gist(err)}); re-create it"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise LTUError(
            f"checkpoint {str(p)!r} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by ltu fit"
        )
    check_weights(ckpt["state_dict"], p)
    return ckpt


def weight_problem(state_dict: Mapping[str, Any]) -> str | None:
    """What is wrong with the model's weights in ``state_dict`` (non-finite, or too large to
    come from training), or None."""
    weights = {
        k: v
        for k, v in state_dict.items()
        if k.startswith(MODEL_PREFIX) and torch.is_tensor(v) and v.is_floating_point()
    }
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        return f"non-finite weights (NaN or inf in {', '.join(bad[:3])})"
    huge = [k for k, v in weights.items() if v.numel() and v.abs().max() > HUGE_WEIGHT]
    if huge:
        return f"weights beyond ±{HUGE_WEIGHT:g} in {', '.join(huge[:3])} (a damaged file?)"
    return None


def check_weights(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose model weights are non-finite or absurdly large."""
    problem = weight_problem(state_dict)
    if problem:
        raise LTUError(
            f"checkpoint {str(path)!r} holds {problem} and cannot be used; "
            "use an earlier checkpoint of that run or re-create it"
        )


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temp file in its own folder, ``fsync``s and renames it.

    A crash or a full disk mid-write leaves the previous checkpoint whole (Lightning's own save
    writes into ``$TMPDIR`` and moves, a copy when that is another file system). A checkpoint
    whose model weights are non-finite is never written.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        target = Path(path)
        kept = (
            f"the previous {target.name} is kept whole"
            if target.exists()
            else f"{target.name} was not written"
        )
        problem = weight_problem(checkpoint.get("state_dict", {}))
        if problem:
            raise NonFiniteStepError(
                f"the model has {problem} after epoch {checkpoint.get('epoch')}, so it was not "
                f"saved ({kept}); lower the learning rate"
            )
        try:
            write_atomic(target, lambda f: torch.save(checkpoint, f))
        except OSError as err:
            raise disk_error(
                err,
                f"could not write checkpoint {str(target)!r}",
                f"{kept}; free space or pass another --trainer.default_root_dir",
            ) from err


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Give the trainer ``AtomicCheckpointIO`` unless it was given a checkpoint plugin of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def local_ckpt_path(
    ckpt_path: str | os.PathLike | None, root_dir: str | os.PathLike | None
) -> Path | None:
    """The local file a ``--ckpt_path`` names (``file://`` URLs and ``last``/``best`` of
    ``<root_dir>/checkpoints`` included); None for what only Lightning resolves (other URLs,
    ``hpc``, ``registry:``)."""
    if not ckpt_path:
        return None
    text = str(ckpt_path)
    if text in ("last", "best"):
        path = Path(root_dir or os.getcwd()) / "checkpoints" / f"{text}.ckpt"
        if not path.is_file():
            raise LTUError(
                f"--ckpt_path {text}: there is no {path}; give the path of a checkpoint, or "
                f"the --trainer.default_root_dir of the run that wrote it"
            )
        return path
    if text.split(":")[0] in CKPT_PATH_KEYWORDS:
        return None
    if "://" in text:
        url = urlparse(text)
        return Path(unquote(url.netloc + url.path)) if url.scheme == "file" else None
    return Path(text)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_resume_args(
    ckpt_path: str | os.PathLike | None,
    root_dir: str | os.PathLike | None,
    model_args: Mapping[str, Any],
) -> None:
    """Before Lightning reads a ``--ckpt_path`` (from a flag, an abbreviation, a config file
    or a ``file://`` URL): read it the safe way (one-line errors), and refuse model arguments
    that differ from the checkpoint's hyperparameters (LightningCLI would silently replace
    them by the checkpoint's)."""
    path = local_ckpt_path(ckpt_path, root_dir)
    if path is None:
        return
    ckpt = load_checkpoint(path)
    saved = ckpt.get("hyper_parameters") or {}
    plain = (int, float, str, bool, type(None), list, tuple)
    differ = [
        f"--model.init_args.{key} {_plain(model_args[key])!r} vs {_plain(value)!r}"
        for key, value in saved.items()
        if isinstance(value, plain)
        and key in model_args
        and isinstance(model_args[key], plain)
        and _plain(model_args[key]) != _plain(value)
    ]
    if differ:
        raise LTUError(
            f"this run's model arguments differ from those checkpoint {str(path)!r} was trained "
            f"with ({'; '.join(differ)}); a resume continues that run: drop those flags or give "
            "the checkpoint's values"
        )


def check_resume_config(config: Mapping[str, Any] | None) -> None:
    """``check_resume_args`` on a parsed subcommand config (LightningCLI's ``fit``,
    ``validate``, ...: ``ckpt_path``, ``weights_only``, ``trainer``, ``model``); nothing when
    ``weights_only`` is false (a file the user trusts)."""
    if not config or str(config.get("weights_only")).lower() == "false":
        return
    model = config.get("model")
    args = model.get("init_args") if isinstance(model, Mapping | Namespace) else None
    if isinstance(args, Namespace):
        args = args.as_dict()
    root = (config.get("trainer") or {}).get("default_root_dir")
    check_resume_args(config.get("ckpt_path"), root, args or {})


def check_resume(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """When a trainer restores ``checkpoint`` into ``module`` (resume, validate, test): refuse
    one of another split or without one, one with bad weights, and one that does not fit the
    backbone, each naming the file (a config file's or a URL's ``ckpt_path`` included)."""
    trainer = module._trainer
    path = str(trainer.ckpt_path) if trainer is not None else "the checkpoint"
    state = checkpoint.get("state_dict") or {}
    check_weights(state, path)
    run_split = getattr(module, "split_id", None)
    ckpt_split = checkpoint_split_id(checkpoint)
    if run_split is not None and ckpt_split != run_split:
        was = (
            f"was trained on split {ckpt_split}"
            if ckpt_split
            else f"records no split ({SPLIT_KEY})"
        )
        raise LTUError(
            f"checkpoint {path!r} {was}, but this run uses split {run_split}; resume only from a "
            "checkpoint of this split: the same data arguments, or --data.manifest_path of the run that wrote it"
        )
    expected = {k: v for k, v in module.state_dict().items() if k.startswith(MODEL_PREFIX)}
    given = {k: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    if missing or unexpected or wrong:
        detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        if wrong:
            key = wrong[0]
            detail = f"{key} of shape {tuple(given[key].shape)} where the backbone has {tuple(expected[key].shape)}"
        raise LTUError(
            f"checkpoint {path!r} does not match the backbone {type(module.backbone).__name__} "
            f"({detail}); resume with the backbone settings it was trained with"
        )


def load_unlearned_weights(network: nn.Module, checkpoint_path: str | os.PathLike) -> nn.Module:
    """Copy the network weights of a checkpoint (an unlearning run's ``best.ckpt`` or
    ``last.ckpt``, or an original model's) into ``network``, built as when it was trained, and
    return it. Refuses, in one line, a checkpoint whose weights do not fit ``network``.

    After ``trainer.fit`` the unlearning module's network already holds the kept weights;
    this is for a later session. (``LTUModule.load_from_checkpoint(path, backbone=network)``
    restores the whole module instead.)
    """
    load_backbone_weights(network, checkpoint_path, None)
    return network
