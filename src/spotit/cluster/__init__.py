"""Beyond one machine: the region shortlist in Milvus (milvus.py), extraction on Ray Data (ray_extract.py).

Both need the optional extra `pip install 'spotit[cluster]'`; `require` says so in one line when it is missing."""

from __future__ import annotations

import importlib
import re

from ..errors import SpotitError

EXTRA = "pip install 'spotit[cluster]'"


def require(module: str, purpose: str):
    """Import `module`, or SpotitError saying which extra to install for `purpose`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpotitError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {EXTRA}") from None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def first_line(exc: BaseException, last: bool = False) -> str:
    """An exception's message as one line (its first, or its `last`), for errors said in one line;
    pymilvus' exceptions give their message, not their repr."""
    text = getattr(exc, "message", None)
    lines = str(text if isinstance(text, str) and text else exc).strip().splitlines() or [type(exc).__name__]
    return lines[-1 if last else 0][:300]


def public(address: str) -> str:
    """An address as it may be shown: without a user name and password in it."""
    return re.sub(r"(?<=://)[^/@]*@", "", address)
