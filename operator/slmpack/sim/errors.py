"""Errors of the simulators."""

from slmpack.errors import SlmpackError


class SimStartupError(SlmpackError):
    """A simulated engine cannot start: the message is the one vLLM would print."""
