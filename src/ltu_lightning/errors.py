"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class LTUError(ValueError):
    """A problem with the user's input (config, data, checkpoint).

    The CLI prints ``error: <message>`` on one line and exits with status 2 instead of a
    traceback; library users catch it as a ``ValueError``.
    """


class NonFiniteStepError(LTUError):
    """A training step produced non-finite values and was refused before it touched the
    weights: the model (and its last checkpoint) stay those of the last good step."""
