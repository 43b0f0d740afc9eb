"""Turning scores into rankings, and the assignment's rank-list file format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .store import atomic_write_bytes


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices from best to worst score; ties keep gallery order so rankings are reproducible."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def ranklist_line(query_name: str, ids: list[str]) -> str:
    """`Q<name>: <id>, <id>, ...` as in the assignment."""
    return f"Q{query_name}: " + ", ".join(ids)


def write_ranklist(path: str | os.PathLike, lines: list[str]) -> None:
    """Write the rank list atomically so a partial file never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_ranklist(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parse a rank-list file back into {query name: [ids]}."""
    ranking = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            head, _, tail = line.partition(":")
            ranking[head.strip()[1:]] = [i.strip() for i in tail.split(",") if i.strip()]
    return ranking
