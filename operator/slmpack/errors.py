"""Domain errors. Each message says what is wrong and how to fix it."""


class SlmpackError(Exception):
    """Base class of every error slmpack raises on purpose."""


class CatalogError(SlmpackError):
    """A GPU or model is unknown, or a catalogue file is invalid."""


class DoesNotFitError(SlmpackError):
    """A replica cannot fit the GPU (or MIG slice) even alone."""


class InvalidSpecError(SlmpackError):
    """The request is inconsistent (e.g. a MIG profile on a GPU without MIG)."""
