"""Part of a gallery to search: a folder in it (`under`) and a range of dates taken (`since`, `until`).

Dates come from the photo's EXIF (DateTimeOriginal, else DateTime: images.taken), read when it is
indexed; a photo without one is outside any date range. EXIF times carry no time zone: they are compared as written."""

from __future__ import annotations

import bisect
import datetime as dt
import os
from dataclasses import dataclass

import numpy as np

from ..errors import SpotitError
from ..storage.catalogue import NO_DATE, encode


def parse_date(value, end: bool = False, option: str = "date") -> int | None:
    """A date ("2024-06-01"), a datetime ("2024-06-01T14:30"), or a date/datetime object, as seconds;
    a date alone stands for its first second, or with `end` for its last."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value) if "T" in value or " " in value.strip() else dt.date.fromisoformat(value)
        except ValueError:
            raise SpotitError(f"{option} {value}: not a date; give one like 2024-06-01 or 2024-06-01T14:30") from None
    if isinstance(value, dt.datetime):
        return int(value.replace(tzinfo=dt.timezone.utc).timestamp())
    if isinstance(value, dt.date):
        day = dt.datetime.combine(value, dt.time.max if end else dt.time.min, dt.timezone.utc)
        return int(day.timestamp())
    raise SpotitError(f"{option} {value!r}: give a string like 2024-06-01, a date or a datetime")


@dataclass(frozen=True)
class Scope:
    under: str | None = None  # a folder of the gallery, as a relative POSIX path
    since: int | None = None
    until: int | None = None

    @classmethod
    def of(cls, under=None, since=None, until=None) -> "Scope":
        folder = None
        if under not in (None, "", "."):
            folder = str(under).replace(os.sep, "/").strip("/")
            if folder.startswith("../") or "/../" in f"/{folder}/":
                raise SpotitError(f"--under {under}: give a folder inside the gallery, relative to it")
        scope = cls(folder, parse_date(since, option="--since"), parse_date(until, end=True, option="--until"))
        if scope.since is not None and scope.until is not None and scope.since > scope.until:
            raise SpotitError("--since is after --until: nothing is in that range")
        return scope

    def mask(self, snap) -> np.ndarray | None:
        """Which photos of the snapshot are in scope (None: all of them)."""
        if self == Scope():
            return None
        inside = np.ones(len(snap.names), bool)
        if self.under is not None:  # catalogue order is byte order: a folder's photos are one run of it
            prefix = encode(self.under + "/")
            low = bisect.bisect_left(snap.names, prefix, key=encode)
            high = bisect.bisect_left(snap.names, encode(self.under + "0"), key=encode)  # "0" follows "/"
            inside[:low] = inside[high:] = False
        if self.since is not None or self.until is not None:
            dates = snap.taken
            inside &= dates != NO_DATE
            if self.since is not None:
                inside &= dates >= self.since
            if self.until is not None:
                inside &= dates <= self.until
        return inside
