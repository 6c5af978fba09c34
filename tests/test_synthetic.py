"""Synthetic inputs (`covid_xray.synthetic`): the non-X-ray set decodes and is deterministic."""

from __future__ import annotations

from covid_xray import imaging, ood, synthetic


def test_synthetic_non_xray_set_decodes_and_covers_every_category(tmp_path):
    cases = synthetic.synthetic_non_xrays(seed=0)
    corpus_non_xray, corpus_chest = synthetic.corpus_cases(tmp_path)
    assert len(cases) + len(corpus_non_xray) >= 40
    assert {c.category for c in cases} | {"corpus"} == set(synthetic.NON_XRAY_CATEGORIES)
    assert sorted(name for name, _, _ in corpus_non_xray) == sorted(synthetic.CORPUS_NON_XRAY)
    assert corpus_chest, "the corpus's chest-like cases are scored separately"
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    by_category: dict[str, list[list[str]]] = {}
    for case in cases:
        rgb = imaging.load_image(case.content)
        by_category.setdefault(case.category, []).append(ood.check_image(rgb).flags)
    # Colour content is caught by the cheap checks alone; greyscale anatomy is not (that is the
    # learned check's job, measured by `measure`).
    for category in ("photo", "screenshot", "scene"):
        assert all("colour" in flags for flags in by_category[category]), category
    assert all(flags == [] for flags in by_category["limb"] + by_category["skull"])


def test_synthetic_set_is_deterministic():
    a = [c.content for c in synthetic.synthetic_non_xrays(seed=5)]
    b = [c.content for c in synthetic.synthetic_non_xrays(seed=5)]
    assert a == b
