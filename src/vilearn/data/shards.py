"""Splitting a dataset's shapes among independent jobs: ``--shard K/N`` (a cluster job array).

A shape belongs to shard ``sha256("shard/" + id) mod N``: a stable function of its id alone,
so N jobs that each list the same source agree on the split without talking to each other, and
adding meshes to the source never moves a shape to another shard. Shard ``K`` (0 <= K < N)
processes only its own shapes and writes only their files; ``prepare`` writes its manifest rows
to its own part, ``DATASET/manifest.d/shard-K-of-N.jsonl``, and ``merge_manifests`` (``vilearn
merge-shards DATASET``) builds the one ``manifest.jsonl`` (and ``CREDITS``) from all N parts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from vilearn.data.layout import DatasetLayout

PART = re.compile(r"shard-(\d+)-of-(\d+)\.jsonl")


def shard_of(shape_id: str, count: int) -> int:
    """The shard (0 <= shard < count) that owns ``shape_id``."""
    digest = hashlib.sha256(f"shard/{shape_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, as job-array task ids usually are)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= K < N (K/N, K counted from 0)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"3/16"`` -> Shard(3, 16)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"--shard {text!r}: expected K/N, e.g. 3/16 (shard K of N, K from 0)")
        return cls(int(match[1]), int(match[2]))

    def owns(self, shape_id: str) -> bool:
        return shard_of(shape_id, self.count) == self.index

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def manifest_part(layout: DatasetLayout, shard: Shard) -> Path:
    return layout.manifest_parts / f"{shard.name}.jsonl"


def merge_manifests(root: str | Path) -> tuple[int, int]:
    """Build ``manifest.jsonl`` from every shard's part; returns (shards, rows).

    Refuses (ValueError naming the parts) when the parts come from different shard counts or
    some shard has not written its part yet; the merge can be run again once they have.
    """
    from vilearn.data.prepare import read_manifest, write_credits, write_manifest

    layout = DatasetLayout(root)
    parts = sorted(layout.manifest_parts.glob("shard-*.jsonl")) if layout.manifest_parts.is_dir() else []
    found: dict[int, set[int]] = {}
    for path in parts:
        match = PART.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path}: not a manifest part (shard-K-of-N.jsonl)")
        found.setdefault(int(match[2]), set()).add(int(match[1]))
    if not found:
        raise ValueError(f"{layout.manifest_parts}: no manifest parts "
                         "(run 'vilearn prepare ... --shard K/N' first)")
    if len(found) > 1:
        raise ValueError(f"{layout.manifest_parts}: parts of different shard counts "
                         f"({', '.join(f'N={n}' for n in sorted(found))}); keep the parts of one split")
    (count, present), = found.items()
    missing = sorted(set(range(count)) - present)
    if missing:
        listed = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"{layout.manifest_parts}: {len(missing)} of {count} shards have no part yet "
                         f"(shards {listed}); merge once every shard has finished")
    rows = {}
    for index in range(count):
        for row in read_manifest(manifest_part(layout, Shard(index, count))):
            rows[row["id"]] = row
    write_manifest(layout.manifest, rows.values())
    write_credits(layout, rows.values())
    return count, len(rows)
