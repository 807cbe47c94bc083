"""Side-by-side timing: the artifacts compared on one target are timed in alternating rounds.

A figure taken minutes after another, under a different load, says little about which is faster. So
every artifact on a target is timed in rounds (A B C, B C A, C A B, ...), each round with its own
warm-up; an artifact's figure is the median of its round medians with an order-statistic interval, and
its ratio to the FP32 artifact of the same format is computed per round (both timed seconds apart) and
summarised the same way.

A figure is marked `noisy` only where its interval could change a decision edgeq makes: an artifact whose ratio to
its FP32 baseline could be either faster or slower (the interval reaches both past 1 - SAME_SPEED and past
1 + SAME_SPEED), or a figure with no interval at all (one round). Elsewhere the interval's width is recorded
(`ci_width`) and shown without alarm: on these shared machines a 20 % wide interval that sits wholly below 1 still
decides "INT8 is faster". What-to-ship treats overlapping intervals as ties (report.verdicts), so its pick does not
hang on a noisy difference either.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from edgeq.core.errors import EdgeqError
from edgeq.core.progress import track
from edgeq.core.stats import median_interval, ratio_interval, relative_width
from edgeq.targets.base import QUANTILES, LatencyStats, sig


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: a rotation, so every artifact takes every position equally often."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)] if n else []


def interleave(names: list[str], time_round: Callable[[str, int], tuple[LatencyStats, list[float] | None]],
               rounds: int, log: Callable[[str], None] = lambda m: None, fatal: tuple[type, ...] = (),
               label: str = "benchmark") -> tuple[dict[str, list[LatencyStats]], dict[str, list[float]], dict[str, str]]:
    """Run `time_round(name, round)` for every name in rotating order, `rounds` times.

    time_round returns one round's LatencyStats and, where the runtime gives them, its raw samples.
    An artifact whose round fails with an EdgeqError leaves the rotation and the reason is returned;
    an exception of a `fatal` type (e.g. the device went away) ends the whole set."""
    per_round: dict[str, list[LatencyStats]] = {n: [] for n in names}
    pooled: dict[str, list[float]] = {n: [] for n in names}
    failed: dict[str, str] = {}

    for r, order in enumerate(track(round_orders(names, rounds), rounds, label, unit="rounds")):
        for name in order:
            if name in failed:
                continue
            try:
                stats, samples = time_round(name, r)
            except fatal:
                raise
            except EdgeqError as e:
                failed[name] = str(e)
                log(f"- {name}: not measured: {e}")
                continue
            per_round[name].append(stats)
            pooled[name].extend(samples or [])
        if rounds > 1:
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {per_round[n][-1].median:.4g}" for n in order if n not in failed and per_round[n]) + " ms")
    return per_round, pooled, failed


def capped_runs(ms_per_run: float, runs: int, warmup: int, max_round_seconds: float | None,
                min_runs: int = 5) -> tuple[int, int]:
    """(runs, warm-up) of one round of an artifact taking `ms_per_run`, so that the round stays within
    `max_round_seconds` (a precision on reference kernels would otherwise take minutes over all rounds); never fewer
    than `min_runs` timed runs and one warm-up. Unchanged when the round fits, or with no cap."""
    if max_round_seconds is None or ms_per_run <= 0 or (runs + warmup) * ms_per_run <= max_round_seconds * 1000:
        return runs, warmup
    fit = int(max_round_seconds * 1000 / ms_per_run)  # runs + warm-up that fit in the cap
    new_runs = max(min_runs, min(runs, int(fit * runs / (runs + warmup))))
    return new_runs, max(1, min(warmup, fit - new_runs))


def summarise(rounds: list[LatencyStats], pooled: list[float] | None, noisy_limit: float) -> LatencyStats:
    """One LatencyStats from an artifact's rounds: median of round medians, its 95 % interval, pooled spread."""
    first = rounds[0]
    meds = [r.median for r in rounds]
    med, lo, hi, cov = median_interval(meds) if len(meds) > 1 else (meds[0], None, None, None)
    if pooled:
        a = np.asarray(pooled, np.float64)
        pct = {p: sig(float(np.percentile(a, p))) for p in (*QUANTILES, 90, 99)}
        lo_all, hi_all, mean = float(a.min()), float(a.max()), float(a.mean())
    else:  # a tool that reports summaries only (trtexec): the median over rounds of each round's figure
        pct = {p: float(np.median([r.quantiles.get(f"p{p}", r.median) for r in rounds])) for p in QUANTILES}
        pct.update({90: _median_of(rounds, "p90"), 99: _median_of(rounds, "p99")})
        lo_all, hi_all, mean = min(r.min for r in rounds), max(r.max for r in rounds), float(np.mean([r.mean for r in rounds]))
    s = replace(first, min=sig(lo_all), median=sig(float(med)), mean=sig(mean), p90=pct[90], p99=pct[99],
                max=sig(hi_all), runs=sum(r.runs for r in rounds), rounds=len(rounds),
                median_ci95=[sig(float(lo)), sig(float(hi))] if lo is not None else None,
                ci_coverage=sig(cov) if cov is not None else None, round_medians=[sig(m) for m in meds],
                quantiles={f"p{p}": pct[p] for p in QUANTILES})
    s.noisy, s.noisy_reason = _noisy(s)
    if s.median_ci95 is not None:
        s.ci_width = sig(relative_width(*s.median_ci95, s.median), 3)
    return s


def _median_of(rounds: list[LatencyStats], attr: str) -> float | None:
    v = [getattr(r, attr) for r in rounds if getattr(r, attr) is not None]
    return float(np.median(v)) if v else None


SAME_SPEED = 0.02  # a ratio within 2 % of 1 is the same speed to a user (report.verdicts uses the same tolerance)


def _noisy(s: LatencyStats) -> tuple[bool, str | None]:
    if s.median_ci95 is None:
        return True, ("one round only: no interval; set benchmark.rounds >= 6 for a 95 % interval of the median")
    return False, None


def undecided(lo: float, hi: float) -> bool:
    """A ratio interval that leaves open whether the artifact is faster or slower than its baseline."""
    return lo < 1 - SAME_SPEED and hi > 1 + SAME_SPEED


def add_ratios(stats: dict[str, LatencyStats], per_round: dict[str, list[LatencyStats]],
               reference_of: dict[str, str], noisy_limit: float) -> None:
    """Each artifact's latency ratio to its FP32 reference, computed round by round (same round = same load)."""
    for name, ref in reference_of.items():
        if name == ref or name not in stats or ref not in stats:
            continue
        pairs = list(zip(per_round[name], per_round[ref]))
        ratios = [a.median / b.median for a, b in pairs if b.median > 0]
        if not ratios:
            continue
        if len(ratios) > 1:
            value, lo, hi, cov = ratio_interval(ratios)
            ci = [sig(float(lo)), sig(float(hi))]
        else:
            value, ci, cov = ratios[0], None, None
        stats[name].ratio_to_fp32 = {"value": sig(float(value)), "ci95": ci, "reference": ref,
                                     "rounds": len(ratios), "coverage": sig(cov) if cov is not None else None}
        if ci and not stats[name].noisy and undecided(*ci):
            stats[name].noisy = True
            stats[name].noisy_reason = (f"its ratio to {ref} is {value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]: whether it is "
                                        f"faster or slower than {ref} is not decided; rerun on an idle machine or "
                                        "raise benchmark.rounds")
