"""Statistics over seeds: each number against a known answer (a worked example, scipy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from runner.report import write_report
from runner.seedstats import (
    MIN_SEEDS,
    TOO_FEW,
    comparable_pairs,
    compare,
    final_statistics,
    spread,
    welch,
)

# Welch's t-test worked example (Wikipedia, "Welch's t-test", example 1): two samples of 15
# with unequal variances; t = (mean A1 - mean A2) / SE = -2.46, df = 25.0, two-sided p = 0.021.
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_spread_of_one_to_five_by_hand():
    # mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445 (t tables): CI = 3 -/+ 2.776445 * sqrt(2.5 / 5).
    s = spread([1, 2, 3, 4, 5])
    assert (s.n, s.mean, s.min, s.max) == (5, 3.0, 1.0, 5.0)
    assert s.std == pytest.approx(math.sqrt(2.5), rel=1e-12)
    half = 2.776445105 * math.sqrt(0.5)
    assert s.ci == pytest.approx((3 - half, 3 + half), rel=1e-8)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_spread_matches_scipy(n):
    values = np.random.default_rng(n).normal(0.3, 0.05, n)
    s = spread(values)
    assert s.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert s.ci == pytest.approx((low, high), rel=1e-12)


def test_one_seed_has_no_spread_and_no_interval():
    s = spread([0.25])
    assert (s.n, s.mean, s.std, s.min, s.max, s.ci) == (1, 0.25, None, 0.25, 0.25, None)
    c = compare("a", "b", "val_loss", [0.25], [0.5, 0.6, 0.7])
    assert c.test is None and c.verdict == TOO_FEW


def test_welch_reproduces_the_worked_example_and_scipy():
    w = welch(A2, A1)  # mean(A1) - mean(A2), as in the example
    assert (round(w.t, 2), round(w.df, 1), round(w.p, 3)) == (-2.46, 25.0, 0.021)
    ref = stats.ttest_ind(A1, A2, equal_var=False)
    assert w.t == pytest.approx(ref.statistic, rel=1e-12)
    assert w.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert w.df == pytest.approx(ref.df, rel=1e-12)


def test_verdicts_at_alpha_and_below_three_seeds():
    far = compare("a", "b", "val_loss", [1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert far.test.p < 0.05 and far.verdict.startswith("differs")
    near = compare("a", "b", "val_loss", [1.0, 1.2, 0.8], [1.05, 1.25, 0.85])
    assert near.test.p > 0.05 and near.verdict.startswith("within")
    # Two seeds a side: the p-value is computed (it is shown) but not judged.
    two = compare("a", "b", "val_loss", [1.0, 1.1], [2.0, 2.1])
    assert MIN_SEEDS == 3 and two.test.p < 0.05 and two.verdict == TOO_FEW
    flat = compare("a", "b", "val_loss", [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert math.isnan(flat.test.p) and flat.verdict == "no seed-to-seed spread to compare with"


def test_pairs_differ_in_exactly_one_swept_key():
    configs = ["batch_size=8,lr=0.1", "batch_size=32,lr=0.1", "batch_size=8,lr=0.2", "batch_size=32,lr=0.2"]
    assert comparable_pairs(configs) == [
        ("batch_size=8,lr=0.1", "batch_size=32,lr=0.1"),
        ("batch_size=8,lr=0.1", "batch_size=8,lr=0.2"),
        ("batch_size=32,lr=0.1", "batch_size=32,lr=0.2"),
        ("batch_size=8,lr=0.2", "batch_size=32,lr=0.2"),
    ]
    assert comparable_pairs(["batch_size=full", "batch_size=1", "batch_size=8"]) == [
        ("batch_size=full", "batch_size=1"),
        ("batch_size=full", "batch_size=8"),
        ("batch_size=1", "batch_size=8"),
    ]


def test_a_key_with_many_values_is_compared_between_neighbours():
    configs = [f"lr={lr}" for lr in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)]  # 6 values: 5 neighbour pairs, not 15
    assert comparable_pairs(configs) == list(zip(configs, configs[1:]))


def test_final_statistics_leave_out_metrics_a_member_lacks():
    summaries = [{"val_loss": 0.5, "train_loss": 0.1, "val_acc": None}, {"val_loss": 0.7, "train_loss": 0.3, "val_acc": 0.9}]
    found = final_statistics(summaries)
    assert set(found) == {"val_loss", "train_loss"}
    assert found["val_loss"]["values"] == [0.5, 0.7] and found["val_loss"]["mean"] == pytest.approx(0.6)
    assert found["val_loss"]["ci"] == pytest.approx(list(stats.t.interval(0.95, 1, loc=0.6, scale=stats.sem([0.5, 0.7]))))


# --------------------------------------------------------------------------- the report
VALUES = {"full": [0.61, 0.64, 0.60, 0.66], "8": [0.31, 0.35, 0.30], "1": [0.29, 0.40]}


def _sweep(root: Path, values: dict[str, list[float]]) -> Path:
    for b, losses in values.items():
        for seed, loss in enumerate(losses):
            run = root / f"batch_size={b}" / f"seed={seed}"
            run.mkdir(parents=True)
            summary = {"status": "done", "val_loss": loss, "train_loss": loss / 2, "batch_size": b}
            (run / "summary.json").write_text(json.dumps(summary))
    return root


def _rows(text: str, after: str) -> list[list[str]]:
    """The cells of the first table after the text ``after``, header and rule left out."""
    lines = text.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


def test_report_tables_hold_the_spread_and_welch_of_every_pair(tmp_path):
    text = write_report(_sweep(tmp_path / "sweep", VALUES)).read_text()
    section = text.split("## Statistics over seeds", 1)[1]
    assert "Warning: too few seeds" in section and "`batch_size=1`" in section.split("Warning", 1)[1].split("\n")[0]
    rows = {r[0]: r for r in _rows(section, "(`val_loss`)")}
    full = np.array(VALUES["full"])
    low, high = stats.t.interval(0.95, 3, loc=full.mean(), scale=stats.sem(full))
    assert rows["`batch_size=full`"][1:6] == ["4", f"{full.mean():.4g}", f"{full.std(ddof=1):.4g}", "0.6", "0.66"]
    assert rows["`batch_size=full`"][6] == f"[{low:.4g}, {high:.4g}]"
    cells = {(r[0], r[1]): r for r in _rows(section, "with Welch's t-test")}
    # Configurations in natural order (1, 8, full); t is mean(B) - mean(A) over its standard error.
    row = cells[("`batch_size=8`", "`batch_size=full`")]
    ref = stats.ttest_ind(VALUES["full"], VALUES["8"], equal_var=False)
    assert row[2] == "val_loss" and row[6] == f"{ref.statistic:.4g}" and row[7] == f"{ref.df:.4g}"
    assert ref.pvalue < 1e-4 and row[8] == "< 0.0001" and row[9].startswith("differs")
    two = cells[("`batch_size=1`", "`batch_size=8`")]
    ref = stats.ttest_ind(VALUES["8"], VALUES["1"], equal_var=False)
    assert two[8] == f"{ref.pvalue:.2g}" and two[9] == TOO_FEW  # p shown, not judged
    assert len(cells) == 3  # every pair of regimes, on the validation loss
    assert (tmp_path / "sweep" / "report" / "final_over_seeds.png").stat().st_size > 10_000


def test_a_single_seed_per_configuration_says_too_few_seeds(tmp_path):
    text = write_report(_sweep(tmp_path / "sweep", {"full": [0.6], "8": [0.3]})).read_text()
    section = text.split("## Statistics over seeds", 1)[1]
    assert "Too few seeds to say" in section and "CI" not in section and "Welch" not in section
    assert not (tmp_path / "sweep" / "report" / "final_over_seeds.png").exists()
