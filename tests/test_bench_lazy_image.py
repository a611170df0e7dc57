"""``benchmarks/lazy_image.py --quick``: a lazily generated image is validated and embedded without computing
all of level 0 (issue 16: the image check used to compute every level-0 chunk of a lazily built pyramid)."""

from __future__ import annotations

from _bench import load_benchmark


def test_quick_computes_only_what_the_windows_need():
    bench = load_benchmark("lazy_image")
    results = {r["config"]: r for r in bench.main(["--quick", "--configs", "parse,stored"])}
    parse, stored = results["parse"], results["stored"]
    build, validation, embedding = parse["steps"]
    assert build["chunks"] == 0  # Image2DModel.parse(scale_factors=...) computes nothing
    # the image check samples 16 windows of 8 px: at most 4 chunks each, of level 0 here (the coarse levels
    # derive from it), not the whole level
    assert 0 < validation["chunks"] <= 4 * 16
    # the embedding needs the chunks under its dense map; besides them it may compute the validation's
    # samples again (embed checks the image too) and the overshoot of square edge tiles, no more than it needs
    assert parse["needed"] > 0
    assert parse["beyond"] <= parse["needed"]
    assert embedding["chunks"] <= parse["needed"] + validation["chunks"] + parse["beyond"]
    assert parse["computed"] < parse["level0_chunks"] / 2
    # coarse levels that do not derive from level 0 (a stored pyramid): level 0 is never computed
    assert stored["computed"] == 0
    assert stored["needed"] == 0
