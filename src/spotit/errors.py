class SpotitError(Exception):
    """A problem with the user's input or environment, reported as one line, never a traceback."""


class BackendError(SpotitError):
    """A service spotit relies on (Milvus, a Ray cluster) failed or cannot be reached; trying later may work."""
