"""Errors of the dev cluster. Each message says what is wrong and how to fix it."""

from __future__ import annotations

from slmpack.errors import SlmpackError


class DevClusterError(SlmpackError):
    """The dev cluster cannot be built, started, reached or stopped."""


class FleetError(DevClusterError):
    """A fleet description (pools of simulated nodes) is invalid."""
