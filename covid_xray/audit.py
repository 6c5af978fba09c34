"""The leakage audit: exact (same bytes) and near (perceptual hash) duplicates within and across
the train and test splits, and the one answer to "which test images leaked?" (a test image with an
exact or near copy in train; those are left out of every leakage-free score).

Duplicate detection itself lives in `covid_xray.data` (the splits use it too). The audit is
written to `reports/audit.json` by `python -m covid_xray.studies.data audit`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covid_xray import config
from covid_xray.config import AUDIT_FILE, SPLITS
from covid_xray.data import (
    NEAR_DUPLICATE_THRESHOLD,
    PHASH_SIZE,
    DuplicatePair,
    Sample,
    _find_pairs,
    dataset_manifest_hash,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditReport:
    """Exact and near duplicates within train, within test, and across train/test.

    `near_pairs` holds every pair within the perceptual-hash threshold, byte-identical
    pairs included (they are at distance 0); `exact_pairs` only the byte-identical ones.
    """

    num_images: dict[str, int]
    near_threshold: int
    manifest_hash: str
    exact_pairs: tuple[DuplicatePair, ...] = ()
    near_pairs: tuple[DuplicatePair, ...] = ()
    method: str = field(
        default=f"exact: sha256 of file bytes; near: imagehash.phash (hash_size={PHASH_SIZE}) of the "
        "decoded grayscale image, Hamming distance <= near_threshold"
    )

    def counts(self) -> dict[str, dict[str, int]]:
        """Pair counts per kind ("exact", "near") and scope ("train", "test", "train/test", "total")."""
        result = {}
        for kind, pairs in (("exact", self.exact_pairs), ("near", self.near_pairs)):
            scopes = Counter(p.scope for p in pairs)
            result[kind] = {s: scopes.get(s, 0) for s in ("train", "test", "train/test")}
            result[kind]["total"] = len(pairs)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": dict(self.num_images),
            "near_threshold": self.near_threshold,
            "method": self.method,
            "manifest_hash": self.manifest_hash,
            "counts": self.counts(),
            "leaked_test_files": sorted(leaked_test_files(self)),
            "exact_pairs": [p.to_dict() for p in self.exact_pairs],
            "near_pairs": [p.to_dict() for p in self.near_pairs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        def pairs(key: str) -> tuple[DuplicatePair, ...]:
            return tuple(
                DuplicatePair(p["a"], p["b"], int(p["distance"]), bool(p["exact"])) for p in data[key]
            )

        return cls(
            num_images={k: int(v) for k, v in data["num_images"].items()},
            near_threshold=int(data["near_threshold"]),
            manifest_hash=data["manifest_hash"],
            exact_pairs=pairs("exact_pairs"),
            near_pairs=pairs("near_pairs"),
            method=data.get("method", cls.method),
        )

    def to_json(self, path: str | os.PathLike | None = None) -> Path:
        """Write the report as indented JSON (parent folders created); return the path.

        The default is `default_audit_path()`.
        """
        path = Path(path) if path else default_audit_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike | None = None) -> AuditReport:
        """Read a report written by `to_json` (default `default_audit_path()`)."""
        path = Path(path) if path else default_audit_path()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def summary(self) -> str:
        """A few lines for people."""
        c = self.counts()
        images = ", ".join(f"{n} {s}" for s, n in self.num_images.items())
        lines = [
            f"Leakage audit of {sum(self.num_images.values())} images ({images}), "
            f"manifest {self.manifest_hash[:12]}",
            f"  exact duplicates (same bytes):   {c['exact']['total']:3d} pairs: "
            f"{c['exact']['train/test']} across train/test, {c['exact']['train']} within train, "
            f"{c['exact']['test']} within test",
            f"  near duplicates (phash <= {self.near_threshold}):  {c['near']['total']:3d} pairs: "
            f"{c['near']['train/test']} across train/test, {c['near']['train']} within train, "
            f"{c['near']['test']} within test (exact pairs included)",
        ]
        leaked = sorted(leaked_test_files(self))
        lines.append(f"  test images with a copy in train: {len(leaked)}")
        lines.extend(f"    {name}" for name in leaked)
        return "\n".join(lines)


def default_audit_path() -> Path:
    """`<reports dir>/audit.json`; the reports dir honours $COVID_XRAY_REPORTS_DIR."""
    return config.resolve_reports_dir() / AUDIT_FILE


def audit(samples: Sequence[Sample], near_threshold: int = NEAR_DUPLICATE_THRESHOLD) -> AuditReport:
    """Find exact (same bytes) and near (perceptual hash) duplicates among the samples."""
    samples = sorted(samples, key=lambda s: s.relpath)
    found = []
    for i, j, distance, exact in _find_pairs(samples, near_threshold):
        a, b = sorted((samples[i].relpath, samples[j].relpath))
        found.append(DuplicatePair(a, b, distance, exact))
    found.sort(key=lambda p: (p.a, p.b))
    return AuditReport(
        num_images={s: n for s in SPLITS if (n := sum(x.split == s for x in samples))},
        near_threshold=near_threshold,
        manifest_hash=dataset_manifest_hash(samples),
        exact_pairs=tuple(p for p in found if p.exact),
        near_pairs=tuple(found),
    )


def leaked_test_files(report: AuditReport) -> set[str]:
    """Test relpaths with an exact or near duplicate in train (excluded from leakage-free scores)."""
    return set(twins(report))


def twins(report: AuditReport) -> dict[str, frozenset[str]]:
    """{leaked test relpath: the train relpaths that are exact or near copies of it}."""
    found: dict[str, set[str]] = {}
    for pair in (*report.exact_pairs, *report.near_pairs):
        if pair.scope == "train/test":
            test, train = (pair.a, pair.b) if pair.a.startswith("test/") else (pair.b, pair.a)
            found.setdefault(test, set()).add(train)
    return {k: frozenset(v) for k, v in found.items()}


def audit_for(samples: Sequence[Sample], reports_dir: str | os.PathLike | None = None) -> AuditReport:
    """The audit of exactly these samples.

    The first `audit.json` whose manifest matches them: the reports folder's (argument or
    $COVID_XRAY_REPORTS_DIR), the committed one, the cache's; else the audit is run now and its
    result kept in the cache (a Space's clone has the committed file; another dataset gets its own).
    """
    manifest = dataset_manifest_hash(samples)
    candidates = (config.resolve_reports_dir(reports_dir), config.REPORTS_DIR, config.resolve_home())
    for folder in dict.fromkeys(candidates):
        path = folder / AUDIT_FILE
        if not path.is_file():
            continue
        try:
            report = AuditReport.from_json(path)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            logger.warning("Ignoring an unreadable leakage audit (%s: %s).", path.name, exc)
            continue
        if report.manifest_hash == manifest:
            return report
    logger.info("No leakage audit of this dataset on disk; running it.")
    report = audit(samples)
    try:
        report.to_json(config.resolve_home() / AUDIT_FILE)
    except OSError as exc:
        logger.warning("The leakage audit could not be cached (%s).", exc)
    return report
