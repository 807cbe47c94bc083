"""Interleaved timing: rotation, failures, the median-of-rounds summary, per-round ratios, noisy marks;
and the real host benchmark of a tiny run (every figure carries its interval and conditions)."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import run_edgeq
from edgeq.core.errors import EdgeqError, TargetError
from edgeq.targets.base import LatencyStats
from edgeq.targets.interleave import add_ratios, capped_runs, interleave, round_orders, summarise


def _round(median: float, runs: int = 10) -> LatencyStats:
    return LatencyStats.from_samples([median] * runs, warmup=1, threads=1, runtime="test", device="test")


@pytest.mark.parametrize("n,rounds", [(1, 3), (2, 10), (3, 9), (4, 8)])
def test_round_orders_put_every_artifact_at_every_position_equally_often(n, rounds):
    names = [f"a{i}" for i in range(n)]
    orders = round_orders(names, rounds)
    assert len(orders) == rounds and all(sorted(o) == names for o in orders)
    for pos in range(n):
        counts = Counter(o[pos] for o in orders)
        assert max(counts.values()) - min(counts.values()) <= (0 if rounds % n == 0 else 1)


def test_interleave_alternates_artifacts_round_by_round():
    calls = []

    def time_round(name, r):
        calls.append((r, name))
        return _round(1.0), [1.0]

    interleave(["fp32", "int8"], time_round, 3)
    assert calls == [(0, "fp32"), (0, "int8"), (1, "int8"), (1, "fp32"), (2, "fp32"), (2, "int8")]


def test_an_artifact_that_fails_leaves_the_rotation_with_its_reason():
    def time_round(name, r):
        if name == "bad" and r == 1:
            raise EdgeqError("runtime refused it")
        return _round(2.0), None

    per_round, _, failed = interleave(["good", "bad"], time_round, 4)
    assert len(per_round["good"]) == 4 and len(per_round["bad"]) == 1
    assert failed == {"bad": "runtime refused it"}


def test_a_fatal_error_ends_the_whole_set():
    def time_round(name, r):
        raise TargetError("device went away")

    with pytest.raises(TargetError):
        interleave(["a", "b"], time_round, 2, fatal=(TargetError,))


def test_summary_is_the_median_of_round_medians_with_an_order_statistic_interval():
    meds = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.01, 0.99, 1.03]
    s = summarise([_round(m) for m in meds], [m for m in meds for _ in range(10)], noisy_limit=0.5)
    srt = sorted(meds)
    assert s.median == pytest.approx(np.median(meds))
    assert s.median_ci95 == [pytest.approx(srt[1]), pytest.approx(srt[8])]  # x(2), x(9) at n = 10
    assert s.rounds == 10 and s.runs == 100 and s.ci_coverage == pytest.approx(0.97852, abs=1e-4)
    assert not s.noisy and set(s.quantiles) == {"p5", "p25", "p50", "p75", "p95"}


def test_a_wide_interval_that_decides_nothing_is_shown_without_alarm():
    meds = [1.0, 2.0, 0.5, 3.0, 1.5, 0.7, 2.5, 1.2]
    s = summarise([_round(m) for m in meds], None, noisy_limit=0.10)
    assert not s.noisy and s.ci_width > 1.0  # its width is recorded, no flag: no ratio here could change a decision


def test_a_ratio_that_could_be_faster_or_slower_is_noisy_with_what_to_do_and_a_decided_one_is_not():
    load = [1.0, 1.4, 0.8, 1.2, 1.0, 1.6, 0.9, 1.1, 1.3, 0.7]  # a busy machine: rounds swing by +-40 %
    jitter = [0.7, 1.3, 1.25, 0.75, 1.2, 0.8, 1.3, 0.7, 1.0, 1.1]  # the candidate's own swing, round by round
    per_round = {"fp32": [_round(2.0 * f) for f in load], "same": [_round(2.0 * f * j) for f, j in zip(load, jitter)],
                 "fast": [_round(1.2 * f * (0.9 + 0.2 * (j > 1))) for f, j in zip(load, jitter)]}
    stats = {n: summarise(r, None, 0.10) for n, r in per_round.items()}
    add_ratios(stats, per_round, {"fp32": "fp32", "same": "fp32", "fast": "fp32"}, 0.10)
    same, fast = stats["same"], stats["fast"]
    assert same.ratio_to_fp32["ci95"][0] < 0.98 < 1.02 < same.ratio_to_fp32["ci95"][1]
    assert same.noisy and "faster or slower than fp32 is not decided" in same.noisy_reason
    assert "benchmark.rounds" in same.noisy_reason
    assert fast.ratio_to_fp32["ci95"][1] < 0.98 and not fast.noisy  # wide, but wholly faster: decided
    assert not stats["fp32"].noisy


def test_one_round_gives_no_interval_and_says_so():
    s = summarise([_round(1.0)], [1.0] * 10, noisy_limit=0.10)
    assert s.median_ci95 is None and s.noisy and "rounds" in s.noisy_reason


def test_ratio_is_computed_per_round_so_a_load_shift_between_rounds_cancels():
    # the machine gets 3x slower half-way through: both artifacts slow down in the same rounds
    load = [1.0] * 5 + [3.0] * 5
    per_round = {"fp32": [_round(2.0 * f) for f in load], "int8": [_round(1.0 * f) for f in load]}
    stats = {n: summarise(r, None, 0.10) for n, r in per_round.items()}
    add_ratios(stats, per_round, {"fp32": "fp32", "int8": "fp32"}, 0.10)
    r = stats["int8"].ratio_to_fp32
    assert r["value"] == pytest.approx(0.5) and r["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert r["reference"] == "fp32" and r["rounds"] == 10
    assert stats["fp32"].ratio_to_fp32 is None


def test_host_benchmark_of_a_tiny_run_records_intervals_ratios_and_conditions(tiny_run_report):
    rep = tiny_run_report
    cond = rep["conditions"]["host"]
    for k in ("loadavg_before", "loadavg_after", "cpu", "simd", "threads", "rounds", "runs_per_round",
              "busy_processes"):
        assert k in cond
    arts = {a["name"]: a for a in rep["artifacts"]}
    int8 = arts["int8_tflite_ptq"]["latency_ms"]["host"]
    assert int8["rounds"] == cond["rounds"] and len(int8["round_medians"]) == cond["rounds"]
    lo, hi = int8["median_ci95"]
    assert lo <= int8["median"] <= hi and isinstance(int8["noisy"], bool)
    assert int8["ratio_to_fp32"]["reference"] == "fp32_tflite"
    r = int8["ratio_to_fp32"]
    assert r["ci95"][0] <= r["value"] <= r["ci95"][1]
    assert arts["fp32_tflite"]["latency_ms"]["host"]["ratio_to_fp32"] is None


def _round_medians(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    return {a["name"]: a["latency_ms"]["host"].get("round_medians") for a in rep["artifacts"]}


def test_a_rerun_re_measures_latency_unless_asked_to_reuse(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)  # a finished run: every artifact and evaluation is reused
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    first = _round_medians(out)
    p = run_edgeq("run", cfg, "--out", out, "--reuse-benchmarks")
    assert p.returncode == 0 and "host figures reused" in p.stdout, p.stdout + p.stderr
    assert _round_medians(out) == first
    p = run_edgeq("run", cfg, "--out", out)
    assert p.returncode == 0 and "interleaved" in p.stdout
    assert _round_medians(out) != first


@pytest.mark.parametrize("ms,expected", [(0.3, (100, 10)),  # a fast artifact: 33 ms a round, untouched
                                         (12.0, (37, 4)),    # 16x8 MobileNetV2 on reference kernels: 41 runs fit
                                         (55.0, (8, 1)),     # 16x8 ResNet-50: 9 fit
                                         (400.0, (5, 1))])   # slower still: never under min_runs, one warm-up
def test_capped_runs_keep_a_round_within_max_round_seconds(ms, expected):
    runs, warmup = capped_runs(ms, 100, 10, 0.5, min_runs=5)
    assert (runs, warmup) == expected
    assert (runs + warmup) * ms <= 500 or runs == 5


def test_no_cap_leaves_runs_as_configured():
    assert capped_runs(1000.0, 100, 10, None) == (100, 10)
