"""spotit: find the gallery photos that show the same object as a query photo."""

__version__ = "0.1.0"

from .errors import SpotitError  # noqa: E402

__all__ = ["Index", "Result", "UpdateReport", "SpotitError", "default_index_dir", "__version__"]


def __getattr__(name: str):
    """The API loads on first use (PEP 562): `spotit` starts, and answers Ctrl-C, before numpy and h5py load."""
    if name in ("Index", "Result", "UpdateReport", "default_index_dir"):
        from . import index

        return getattr(index, name)
    raise AttributeError(f"module 'spotit' has no attribute {name!r}")
