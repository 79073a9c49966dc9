"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

from contextvars import ContextVar


class LTUError(ValueError):
    """A problem with the user's input (config, data, checkpoint).

    The CLI prints ``error: <message>`` on one line and exits with status 2 instead of a
    traceback; library users catch it as a ``ValueError``.
    """


class NonFiniteStepError(LTUError):
    """A training step produced non-finite values and was refused before it touched the
    weights: the model (and its last checkpoint) stay those of the last good step."""


#: whether the running code was started by the ``ltu`` command (set by ``ltu_lightning.cli``):
#: errors then name CLI flags, otherwise the Python arguments of the API that was called
CLI_ACTIVE: ContextVar[bool] = ContextVar("ltu_cli_active", default=False)


def how_to_set(python: str, cli: str) -> str:
    """The fix of an error in the words of the API in use: ``python`` (e.g.
    ``"UnlearningDataModule(train_on='unlearn')"``) or, under the ``ltu`` command, ``cli``
    (e.g. ``"--data.init_args.train_on unlearn"``)."""
    return cli if CLI_ACTIVE.get() else python
