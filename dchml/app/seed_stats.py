"""Statistics over seeds for the comparison tables: a cell's mean and spread, and whether the
best row's lead over the second is within the seed spread (docs/compare.md, "The mark").

The rule, paired by seed (both rows' runs of one seed share the split and the seed):
  d_s = best_s - second_s over the seeds both rows have, n of them, mean d, sample std s_d;
  - n >= 3: marked when a two-sided paired t-test does not reject "no difference" at 0.05
    (t = mean d / (s_d / sqrt n), n - 1 degrees of freedom); when s_d = 0 the lead is marked
    only if it is 0;
  - n = 2: marked when mean d <= s_d (a t-test with one degree of freedom is nearly never
    significant, so this looser rule is used);
  - n <= 1: always marked: one seed shows no spread, so no lead can be told from noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SIGNIFICANCE = 0.05


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation); std is None for fewer than two values."""
    values = list(values)
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Lead:
    """How the best row of a column compares with the second, paired over seeds."""

    seeds: int               # seeds both rows have
    mean_difference: float | None
    std_difference: float | None
    p_value: float | None    # paired t-test, n >= 3
    within_spread: bool      # the mark

    def describe(self) -> str:
        if self.mean_difference is None:
            return "no seed in common"
        text = f"{self.mean_difference:+.4f} over {self.seeds} paired seed{'s' if self.seeds != 1 else ''}"
        if self.std_difference is not None:
            text += f" (std of the differences {self.std_difference:.4f}"
            text += f", paired t-test p = {self.p_value:.3g})" if self.p_value is not None else ")"
        return text


def paired_lead(best: dict, second: dict) -> Lead:
    """best, second: {seed: MAP}. The lead of `best` over `second` and its mark (module docstring)."""
    seeds = sorted(set(best) & set(second))
    diffs = [best[s] - second[s] for s in seeds]
    mean, std = mean_std(diffs)
    if len(diffs) <= 1:
        return Lead(len(diffs), mean, None, None, True)
    if len(diffs) == 2:
        return Lead(2, mean, std, None, mean <= std)
    if std == 0:
        return Lead(len(diffs), mean, std, 0.0 if mean else 1.0, mean == 0)
    from scipy import stats

    t = mean / (std / math.sqrt(len(diffs)))
    p = float(2 * stats.t.sf(abs(t), len(diffs) - 1))
    return Lead(len(diffs), mean, std, p, p >= SIGNIFICANCE)
