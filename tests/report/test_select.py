"""runner.report.select: the verdict under a budget, ties within the noise, the Pareto front."""

from __future__ import annotations

import numpy as np

from runner.report.select import SelectOptions, choose, latency_trusted, pareto

N = 360


def _row(artifact, size, acc, agreement=1.0, model="cnn", **kw):
    return {
        "dataset": "digits",
        "model": model,
        "recipe": artifact.split(".")[0],
        "role": kw.pop("role", "recipe"),
        "artifact": artifact,
        "format": "keras" if artifact.endswith(".h5") else "tflite",
        "size_bytes": size,
        "size_mb": size / 2**20,
        "accuracy": acc,
        "accuracy_delta": acc - 0.99,
        "agreement": agreement,
        "status": kw.pop("status", "ok"),
        "latency_ms": 0.05,
        "latency_p50_ms": 0.05,
        "latency_spread": 1.1,
        **kw,
    }


ROWS = [
    _row("float.h5", 380_000, 0.99, role="float"),
    _row("none.tflite", 340_000, 0.99, role="reference"),
    _row("dynamic_range.tflite", 93_000, 0.99),
    _row("full_integer.tflite", 92_000, 0.985, agreement=0.962),  # flips too many labels
    _row("int4_weight_only.tflite", 48_000, 0.975, agreement=0.99),  # loses 1.5 points
    _row("int16x8.tflite", 90_000, 0.0, status="failed", error="converter: no kernel"),
]


def test_the_smallest_file_within_the_budget_is_chosen_and_every_other_row_says_why():
    # execute
    (v,) = choose(ROWS)
    # assert
    assert v.chosen["artifact"] == "dynamic_range.tflite"
    assert v.runner_up["artifact"] == "none.tflite"
    reasons = {r["artifact"]: why for r, why in v.rejected}
    assert reasons["full_integer.tflite"] == "agreement 0.9620 < 0.99"
    assert reasons["int4_weight_only.tflite"] == "accuracy drop 0.0150 > 0.01"
    assert reasons["int16x8.tflite"].startswith("failed (converter: no kernel")
    assert "float.h5" not in reasons  # a Keras file is not a candidate, nor a rejection
    assert v.lines()[0].startswith("ship (digits, cnn): dynamic_range.tflite, 0.089 MB")


def test_an_impossible_budget_says_so_and_names_the_closest():
    (v,) = choose(ROWS, SelectOptions(max_size_mb=0.001))
    assert v.chosen is None
    line = v.lines()[0]
    assert "no artifact meets the budget" in line and "the closest is" in line
    assert "looser budget" in line


def test_two_files_within_the_test_splits_noise_are_a_tie_that_goes_to_the_smaller():
    # setup: b is right on one sample more than a (of 360): far inside the noise
    y = np.arange(N) % 10
    wrong_a = np.r_[0:8]
    wrong_b = np.r_[0:7]
    labels = {"a.tflite": y.copy(), "b.tflite": y.copy()}
    labels["a.tflite"][wrong_a] = (y[wrong_a] + 1) % 10
    labels["b.tflite"][wrong_b] = (y[wrong_b] + 1) % 10
    rows = [
        _row("a.tflite", 50_000, 1 - 8 / N + 0.0, accuracy_delta=0.0),
        _row("b.tflite", 90_000, 1 - 7 / N, accuracy_delta=0.0),
    ]
    for r in rows:
        r["accuracy_delta"] = 0.0
    # execute: most accurate wins, unless within the noise
    (v,) = choose(
        rows,
        SelectOptions(objective="accuracy"),
        predictions=lambda r: labels[r["artifact"]],
        truth=lambda r: y,
    )
    # assert
    assert v.chosen["artifact"] == "a.tflite"
    assert "a tie on accuracy with b.tflite" in v.why and "within the noise" in v.why
    # a real gap is no tie: 40 more wrong
    labels["a.tflite"][:48] = (y[:48] + 1) % 10
    rows[0]["accuracy"] = 1 - 48 / N
    (v,) = choose(
        rows,
        SelectOptions(objective="accuracy", max_accuracy_drop=1),
        predictions=lambda r: labels[r["artifact"]],
        truth=lambda r: y,
    )
    assert v.chosen["artifact"] == "b.tflite" and "beyond the noise" in v.why


def test_each_model_gets_its_own_verdict_and_front():
    rows = [
        _row("none.tflite", 300, 0.99, model="a"),
        _row("int8.tflite", 100, 0.98, model="a"),
        _row("none.tflite", 200, 0.90, model="b"),
    ]
    assert [v.model for v in choose(rows)] == ["a", "b"]
    # b's big-but-bad file would be dominated by a's small-and-good one on one front
    assert pareto(rows) == [True, True, True]


def test_a_row_that_defeats_its_purpose_is_flagged():
    y = np.zeros(N, dtype=int)
    full = _row("full_integer.tflite", 90_000, 0.98)
    qat = _row("qat.tflite", 90_000, 0.90)
    preds = {"full_integer.tflite": np.r_[np.zeros(353), np.ones(7)].astype(int)}
    preds["qat.tflite"] = np.r_[np.zeros(324), np.ones(36)].astype(int)
    (v,) = choose([full, qat], predictions=lambda r: preds[r["artifact"]], truth=lambda r: y)
    assert any("qat.tflite is less accurate than full_integer.tflite" in f for f in v.flags)


def test_latency_decides_only_where_its_spread_is_narrow():
    assert latency_trusted({"latency_spread": 1.2})
    assert not latency_trusted({"latency_spread": 3.0})
    assert not latency_trusted({"latency_spread": 1.1, "latency_note": "machine loaded"})
    rows = [
        _row("slow.tflite", 100, 0.99, latency_p50_ms=5.0),
        _row("noisy.tflite", 200, 0.99, latency_p50_ms=1.0, latency_spread=4.0),
    ]
    (v,) = choose(rows, SelectOptions(objective="latency", max_latency_ms=2.0))
    # a trusted latency over the limit is rejected; an untrusted one is neither rejected nor
    # praised on a number that cannot be trusted, and the verdict says so
    assert [(r["artifact"], why) for r, why in v.rejected] == [
        ("slow.tflite", "latency 5.000 ms > 2 ms")
    ]
    assert v.chosen["artifact"] == "noisy.tflite" and "(not trusted)" in v.lines()[0]


def test_the_budget_is_read_from_a_config_and_a_bad_one_is_one_line():
    import pytest

    from runner.errors import RunnerError
    from runner.report.recommend import budget_of

    assert budget_of(None) == SelectOptions()
    assert budget_of({"select": {"max_size_mb": 0.5}}).max_size_mb == 0.5
    with pytest.raises(RunnerError, match=r"select.max_size_mb=-1: expected a number > 0"):
        budget_of({"select": {"max_size_mb": -1}})


def test_the_chart_puts_the_download_size_on_its_axis_when_the_verdict_minimizes_it(
    tmp_path, monkeypatch
):
    from runner.report import plot as plot_mod
    from runner.report.recommend import write

    rows = [
        _row("full_integer.tflite", 92_000, 0.99, size_gzip_bytes=85_000, job="0"),
        _row("prune.tflite", 92_000, 0.99, size_gzip_bytes=60_000, job="1"),
    ]
    seen = {}
    original = plot_mod._points

    def spy(ax, rows_, pts, several):
        seen.update(pts)
        return original(ax, rows_, pts, several)

    monkeypatch.setattr(plot_mod, "_points", spy)
    found = write(rows, tmp_path, SelectOptions(objective="gzip_size"))
    assert found[0].chosen["artifact"] == "prune.tflite"
    assert [round(x * 2**20) for x, _ in seen.values()] == [85_000, 60_000]
    write(rows, tmp_path, SelectOptions())  # the default objective: the raw size
    assert [round(x * 2**20) for x, _ in seen.values()] == [92_000, 92_000]


def test_an_untrusted_latency_never_reads_as_meeting_the_latency_budget():
    # setup: every latency measured with a wide spread
    rows = [
        _row("a.tflite", 100, 0.99, latency_p50_ms=9.0, latency_spread=4.0),
        _row("b.tflite", 200, 0.99, latency_p50_ms=1.0, latency_spread=5.0),
    ]
    # execute
    (budgeted,) = choose(rows, SelectOptions(max_latency_ms=2.0))
    (fastest,) = choose(rows, SelectOptions(objective="latency"))
    # assert: the why line says the limit was not checked, and that size decided, not latency
    assert "latency <= 2 ms" not in budgeted.why
    assert "select.max_latency_ms=2 was NOT checked" in budgeted.why
    assert fastest.chosen["artifact"] == "a.tflite"
    assert fastest.why.startswith("the smallest file (no file's latency was trusted")


def test_a_file_of_a_job_that_did_not_finish_is_never_shipped():
    # setup: job 1 wrote its small file, then stopped mid-recipe (its incomplete row)
    rows = [
        _row("none.tflite", 340_000, 0.99, role="reference", job="0"),
        _row("full_integer.tflite", 92_000, 0.99, job="0"),
        _row("int4_weight_only.tflite", 48_000, 0.99, job="1"),
        _row("int4_weight_only", 0, 0.0, job="1", status="failed", error="incomplete: killed"),
    ]
    # execute
    (v,) = choose(rows, SelectOptions())
    # assert
    assert v.chosen["artifact"] == "full_integer.tflite"
    why = dict((r["artifact"], w) for r, w in v.rejected)["int4_weight_only.tflite"]
    assert "its job 1 did not finish" in why


def _pattern(n: int, a_only: int, b_only: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels of n samples: a.tflite wrong where b is right on b_only of them, the reverse on
    a_only; the float model right everywhere."""
    y = np.arange(n) % 10
    labels = {k: y.copy() for k in ("float.h5", "a.tflite", "b.tflite")}
    labels["a.tflite"][:b_only] = (y[:b_only] + 1) % 10
    labels["b.tflite"][b_only : b_only + a_only] = (y[b_only : b_only + a_only] + 1) % 10
    return y, labels


def test_a_tie_says_the_split_is_too_small_and_how_many_samples_would_separate_the_two():
    # setup: of 200 test samples, a (the smaller) misses 6 that b gets and b misses 2 that a
    # gets: a 2-point gap inside this split's noise
    from runner.evaluation.noise import paired_gain

    n = 200
    y, labels = _pattern(n, a_only=2, b_only=6)
    rows = [
        _row("float.h5", 400_000, 1.0, role="float"),
        _row("a.tflite", 50_000, 1 - 6 / n, accuracy_delta=0.0),
        _row("b.tflite", 90_000, 1 - 2 / n, accuracy_delta=0.0),
    ]
    # execute
    (v,) = choose(
        rows,
        SelectOptions(objective="accuracy", max_accuracy_drop=0.05),
        predictions=lambda r: labels[r["artifact"]],
        truth=lambda r: y,
    )
    # assert: a tie, and the split that would separate them, which it does when it is that large
    assert "a tie on accuracy with b.tflite" in v.why, v.why
    assert "the test split (200 samples) is too small to separate them: about" in v.why
    needed = int(v.why.split("about ")[1].split(" would")[0].replace(",", ""))
    assert n < needed < 20 * n
    for size, separated in ((needed, True), (needed // 2, False)):
        k = size / n  # the same share of samples changing label, at this size
        yy, big = _pattern(size, a_only=round(2 * k), b_only=round(6 * k))
        gain, bound = paired_gain(big["a.tflite"] == yy, big["b.tflite"] == yy)
        assert (gain >= bound) is separated, (size, gain, bound)


def test_a_split_whose_noise_exceeds_the_accuracy_budget_says_so():
    # setup: 100 test samples; the smallest file misses 1 the float model gets (within a
    # 0.01 budget by its point estimate), but one flip in 100 cannot show a 1-point drop
    n = 100
    y, labels = _pattern(n, a_only=0, b_only=1)
    rows = [
        _row("float.h5", 400_000, 1.0, role="float"),
        _row("a.tflite", 50_000, 0.99, accuracy_delta=-0.01),
    ]
    # execute
    (v,) = choose(rows, predictions=lambda r: labels[r["artifact"]], truth=lambda r: y)
    # assert
    assert v.chosen["artifact"] == "a.tflite"
    note = next(f for f in v.flags if "cannot check select.max_accuracy_drop=0.01" in f)
    assert "the test split (100 samples)" in note and "about" in note, note
    # a large split with the same 1 % of flips can: no note
    y, labels = _pattern(20_000, a_only=0, b_only=10)
    (v,) = choose(
        [dict(rows[0]), {**rows[1], "accuracy": 1 - 10 / 20_000, "accuracy_delta": -0.0005}],
        predictions=lambda r: labels[r["artifact"]],
        truth=lambda r: y,
    )
    assert not [f for f in v.flags if "cannot check" in f], v.flags
