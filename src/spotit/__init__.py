"""spotit: find the gallery photos that show the same object as a query photo."""

__version__ = "0.1.0"

from .errors import SpotitError  # noqa: E402
from .index import Index, Result, UpdateReport, default_index_dir  # noqa: E402

__all__ = ["Index", "Result", "UpdateReport", "SpotitError", "default_index_dir", "__version__"]
