"""The leakage audit (`covid_xray.audit`) on the synthetic dataset with known duplicates and on the
real one (the data README's documented defects)."""

from __future__ import annotations

import json

import pytest

from covid_xray import audit, data

# Test images that are byte-identical copies of train images (data README).
REAL_EXACT_LEAKS = {
    "test/Covid/COVID-00003b.jpg",
    "test/Covid/COVID-00012.jpg",
    "test/Covid/COVID-00022.jpg",
    "test/Covid/COVID-00033.jpg",
    "test/Covid/COVID-00037.jpg",
    "test/Covid/radiopaedia-2019-novel-coronavirus-infected-pneumonia.jpg",
}


def test_audit_synthetic_counts_and_leaks(synth_module, tmp_path):
    report = audit.audit(data.list_samples(synth_module))
    counts = report.counts()
    assert counts["exact"] == {"train": 1, "test": 0, "train/test": 1, "total": 2}
    assert counts["near"] == {"train": 2, "test": 0, "train/test": 2, "total": 4}
    assert audit.leaked_test_files(report) == {"test/Covid/leak.png", "test/Normal/near.jpg"}
    assert report.num_images == {"train": 20, "test": 11}
    # Round trip through JSON.
    path = report.to_json(tmp_path / "sub" / "audit.json")
    loaded = audit.AuditReport.from_json(path)
    assert loaded == report
    saved = json.loads(path.read_text())
    assert saved["leaked_test_files"] == ["test/Covid/leak.png", "test/Normal/near.jpg"]
    assert "2 across train/test" in report.summary()


def test_audit_threshold_zero_keeps_only_identical_hashes(synth_module):
    report = audit.audit(data.list_samples(synth_module), near_threshold=0)
    assert all(p.distance == 0 for p in report.near_pairs)
    assert len(report.exact_pairs) == 2
    with pytest.raises(ValueError, match="near_threshold"):
        audit.audit(data.list_samples(synth_module), near_threshold=-1)


def test_real_audit_reproduces_documented_defects(real_audit):
    counts = real_audit.counts()
    # 10 byte-identical pairs: 6 test images copied from train, 4 pairs inside one split.
    assert counts["exact"] == {"train": 3, "test": 1, "train/test": 6, "total": 10}
    # 27 pairs at phash distance <= 6, 11 of them across train/test.
    assert counts["near"]["total"] == 27 and counts["near"]["train/test"] == 11
    pairs = {(p.a, p.b) for p in real_audit.near_pairs}
    assert ("test/Covid/0112.jpg", "train/Covid/090.jpeg") in pairs
    assert ("test/Normal/0103.jpeg", "train/Viral Pneumonia/022.jpeg") in pairs
    exact_cross = {p.a for p in real_audit.exact_pairs if p.scope == "train/test"}
    assert exact_cross == REAL_EXACT_LEAKS
    leaked = audit.leaked_test_files(real_audit)
    assert REAL_EXACT_LEAKS < leaked and len(leaked) == 9
    assert {"test/Covid/0112.jpg", "test/Normal/0103.jpeg"} <= leaked
