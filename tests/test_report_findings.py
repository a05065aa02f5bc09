"""The report's findings (report.md's first section and findings.json), its plots' colours and
legends, the section hook, and what it does with event files it cannot read.

Most fixtures are written directly (event files through the runner's own writer, summaries as
JSON), so every number is known; one slow test trains a real sweep in-process.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy import stats

from runner.report import SECTIONS, sweep_study, write_report
from runner.report.findings import find, write_json
from runner.report.plots import PLOTS, draw, lines_of, palette
from runner.report.records import Labels, configurations, load_records
from runner.report.sentences import caveats, findings_text, summary_paragraph
from runner.events.writer import EventWriter

from conftest import read_scalars

N = 120
SEEDS = (0, 1, 2)
# Configuration → (batch size, final whole-set loss, milliseconds per epoch). Batch 1 ends far
# lower than batch 8 (the seeds separate them); the full batch is quickest per epoch.
CONFIGS = {"batch_size=1": (1, 0.10, 100.0), "batch_size=8": (8, 0.30, 90.0), "batch_size=120": (120, 1.00, 80.0)}
METRIC = "loss/train_full"


def fake_run(
    directory: Path,
    batch_size: int,
    final: float,
    ms_per_epoch: float,
    seed: int,
    epochs: int = 2,
    budget: tuple[str, float] | None = None,
    last_samples: int | None = None,
    **summary: object,
) -> Path:
    """A finished run's event file and summary.json, with the tags and keys the runner writes."""
    rng = np.random.default_rng([batch_size, seed])
    per_epoch = math.ceil(N / batch_size)
    iterations = per_epoch * epochs
    initial = 2.3 + 0.01 * rng.standard_normal()
    full = np.geomspace(initial, final * (1 + 0.03 * rng.standard_normal()), epochs + 1)
    samples = np.arange(epochs + 1) * N
    if last_samples is not None:  # a samples budget ends within a batch of its amount
        samples[-1] = last_samples
    updates = np.arange(epochs + 1) * per_epoch
    ms = np.concatenate([[0], np.cumsum(ms_per_epoch * (1 + 0.05 * rng.random(epochs)))]).round()
    batch_losses = 2.3 + 0.2 * rng.standard_normal(iterations)
    writer = EventWriter(directory)
    writer.add_scalars(METRIC, np.arange(epochs + 1), full)
    writer.add_scalars(f"vs_samples/{METRIC}", samples, full)
    writer.add_scalars(f"vs_iteration/{METRIC}", updates, full)
    writer.add_scalars(f"vs_time_ms/{METRIC}", ms.astype(np.int64), full)
    writer.add_scalars("loss/train_iter", np.arange(iterations), batch_losses)
    writer.close()
    unit, amount = budget or ("epochs", epochs)
    record = {
        "status": "done",
        "epochs": epochs,
        "iterations": iterations,
        "iterations_per_epoch": per_epoch,
        "samples_seen": int(samples[-1]),
        "n_train": N,
        "batch_size": batch_size,
        "lr": 0.1,
        "budget": {"unit": unit, "amount": amount},
        "train_loss": float(np.float32(full[-1])),
        "initial_train_loss": float(np.float32(full[0])),
        "loss_grew": False,
        "train_seconds": float(ms[-1]) / 1000,
        "hparams": {"lr_scaling": "none", "batch_size": batch_size, "seed": seed},
        "seed": seed,
    }
    record.update(summary)
    (directory / "summary.json").write_text(json.dumps(record))
    return directory


def fake_sweep(root: Path, seeds=SEEDS, **kwargs: object) -> Path:
    for config, (batch_size, final, ms) in CONFIGS.items():
        for seed in seeds:
            fake_run(root / config / f"seed={seed}", batch_size, final, ms, seed, **kwargs)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = fake_sweep(tmp_path_factory.mktemp("findings") / "sweep")
    write_report(root)
    return root


# --------------------------------------------------------------------------- recomputed independently
def _runs(root: Path) -> dict[str, list[dict[str, list[tuple[int, float]]]]]:
    """Configuration → each seed's scalars, read back with TensorBoard's own EventAccumulator."""
    runs: dict[str, list] = {}
    for summary in sorted(root.rglob("summary.json")):
        if json.loads(summary.read_text())["status"] == "done":
            runs.setdefault(summary.parent.parent.name, []).append(read_scalars(summary.parent))
    return runs


def _shared_last(runs, tag: str) -> int | None:
    steps = set.intersection(*({s for s, _ in scalars[tag]} for members in runs.values() for scalars in members)) - {0}
    return max(steps) if steps else None


def _value_at(scalars, tag: str, at: float) -> float:
    """The last point logged at or before ``at``. Steps can repeat (a full-batch epoch can take
    under a millisecond, so two evaluations share a ``vs_time_ms`` step): the later one in the
    file is the last, so the points are read in file order, never sorted by value."""
    steps = [s for s, _ in scalars[tag]]
    assert steps == sorted(steps), tag
    return [v for s, v in scalars[tag] if s <= at][-1]


def expected_findings(root: Path) -> dict:
    """findings.json from the README's definition, computed from the event files."""
    runs = _runs(root)
    samples = _shared_last(runs, f"vs_samples/{METRIC}")
    updates = _shared_last(runs, f"vs_iteration/{METRIC}")
    points = {"samples": (f"vs_samples/{METRIC}", samples)}
    if updates is None:  # whole-set evaluations share only the start: the per-update batch loss
        points["updates"] = ("loss/train_iter", _shared_last(runs, "loss/train_iter"))
    else:
        points["updates"] = (f"vs_iteration/{METRIC}", updates)
    end_ms = min(max(s for s, _ in scalars[f"vs_time_ms/{METRIC}"]) for members in runs.values() for scalars in members)
    points["seconds"] = (f"vs_time_ms/{METRIC}", end_ms)
    axes = {}
    for axis, (tag, at) in points.items():
        values = {c: [_value_at(s, tag, at) for s in members] for c, members in runs.items()}
        table = {}
        for config, v in values.items():
            half = stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / math.sqrt(len(v))
            table[config] = {"mean": float(np.mean(v)), "low": float(np.mean(v) - half), "high": float(np.mean(v) + half), "n": len(v)}
        best = min(table, key=lambda c: table[c]["mean"])
        p = [stats.ttest_ind(values[best], values[c], equal_var=False).pvalue for c in values if c != best]
        separated = all(x < 0.05 for x in p) if all(len(v) >= 3 for v in values.values()) else None
        axes[axis] = {"at": at / 1000 if axis == "seconds" else at, "values": table, "best": best, "separated": separated}
    return axes


def test_findings_json_is_what_the_event_files_say(sweep):
    found = json.loads((sweep / "findings.json").read_text())
    assert set(found) == {"metric", "axes"} and found["metric"] == METRIC
    assert set(found["axes"]) == {"samples", "updates", "seconds"}
    want = expected_findings(sweep)
    for axis, got in found["axes"].items():
        assert set(got) == {"at", "how", "values", "best", "separated"}, axis
        assert got["at"] == pytest.approx(want[axis]["at"]), axis
        assert got["best"] == want[axis]["best"] and got["separated"] == want[axis]["separated"], axis
        assert set(got["values"]) == set(want[axis]["values"]), axis
        for config, value in got["values"].items():
            assert value["n"] == 3
            for key in ("mean", "low", "high"):
                assert value[key] == pytest.approx(want[axis]["values"][config][key], rel=1e-6), (axis, config, key)
    # Equal samples are a logged point all share (2 epochs of 120); the batch sizes' whole-set
    # evaluations share only the start, so equal updates use the per-update batch loss, at the
    # full batch's last update (it made 2 in all).
    assert found["axes"]["samples"]["at"] == 240 and "all of them share" in found["axes"]["samples"]["how"]
    assert found["axes"]["updates"]["at"] == 1 and "loss/train_iter" in found["axes"]["updates"]["how"]
    assert found["axes"]["samples"]["best"] == "batch_size=1" and found["axes"]["samples"]["separated"] is True
    assert "at or before" in found["axes"]["seconds"]["how"]


def _bullet(text: str, title: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- **{title}**"))


def test_the_report_opens_with_findings_carrying_the_same_numbers(sweep):
    text = (sweep / "report.md").read_text()
    assert re.findall(r"^## .*", text, flags=re.M)[0] == "## Findings"
    found = json.loads((sweep / "findings.json").read_text())["axes"]
    titles = {"samples": "At equal samples", "updates": "At equal updates", "seconds": "At equal training time"}
    for axis, title in titles.items():
        line = _bullet(text, title)
        for config, v in found[axis]["values"].items():
            assert f"`{config}` {v['mean']:.4g} ± {(v['high'] - v['low']) / 2:.2g}" in line, (axis, config)
        assert f"best `{found[axis]['best']}`" in line
    assert "(240 samples = 2 epochs of 120)" in _bullet(text, "At equal samples")
    assert "the seeds separate it from every other configuration" in _bullet(text, "At equal samples")
    assert "Budget: 2 epochs (`budget=epochs`) per run." in text


def _findings(root: Path):
    """What the Findings section is made of, without drawing a plot: the configurations, their
    labels, the findings and the section's paragraphs."""
    records = load_records(root)
    configs = configurations(records)
    labels = Labels.build(list(configs), fallback=root.name)
    found = find(configs, labels)
    return configs, labels, found, "\n\n".join(findings_text(found, records) + caveats(configs, labels, found))


def test_one_learning_rate_across_batch_sizes_gets_a_caveat(sweep, tmp_path):
    text = (sweep / "report.md").read_text()
    assert "**One learning rate for every batch size** (0.1 at batch sizes 1, 8, 120" in text
    assert "`lr_scaling=linear`" in text and "experiment=lr_search" in text
    scaled = fake_sweep(tmp_path / "scaled", seeds=(0,), hparams={"lr_scaling": "linear"})
    assert "One learning rate" not in _findings(scaled)[3]


def test_the_budget_of_a_samples_budget_run_is_the_equal_point(tmp_path):
    """budget=samples: each run stops at the first update reaching the amount, so the runs'
    last points differ (100 and 104 samples here): the equal point is the budget itself."""
    root = tmp_path / "budget"
    for config, (batch_size, final, ms) in CONFIGS.items():
        last = 100 if batch_size == 1 else 104
        fake_run(root / config, batch_size, final, ms, 0, epochs=1, budget=("samples", 100.0), last_samples=last)
    _, _, found, text = _findings(root)
    samples = found.as_json()["axes"]["samples"]
    assert samples["at"] == 100 and samples["how"].startswith("the budget: every run trained for 100 samples")
    for config in CONFIGS:
        final = read_scalars(root / config)[f"vs_samples/{METRIC}"][-1][1]
        assert samples["values"][config] == {"mean": pytest.approx(final), "low": None, "high": None, "n": 1}
    assert "Budget: 100 samples (`budget=samples`) per run." in text
    assert "`batch_size=8` " in _bullet(text, "At equal samples") and "(at 104 samples)" in _bullet(text, "At equal samples")
    assert "one seed each, so chance is not ruled out" in _bullet(text, "At equal samples")
    assert "**One seed per configuration**" in text


def test_runs_that_blew_up_or_diverged_are_named(tmp_path):
    root = fake_sweep(tmp_path / "trouble", seeds=(0,))
    grew = root / "batch_size=1" / "seed=0" / "summary.json"
    grew.write_text(json.dumps({**json.loads(grew.read_text()), "loss_grew": True, "train_loss": 23.0, "initial_train_loss": 2.3}))
    diverged = root / "batch_size=8" / "seed=0" / "summary.json"
    diverged.write_text(json.dumps({**json.loads(diverged.read_text()), "status": "diverged", "divergence": {"iteration": 7}}))
    _, _, found, text = _findings(root)
    assert "**Loss grew**: `batch_size=1, seed=0` ended with a whole-training-set loss 10x its initial one" in text
    assert "**Diverged**: `batch_size=8, seed=0` at iteration 7 (non-finite loss): left out of the values above." in text
    assert set(found.as_json()["axes"]["samples"]["values"]) == {"batch_size=1", "batch_size=120"}


def test_a_single_run_gets_one_paragraph_and_no_findings_json(tmp_path):
    run = fake_run(tmp_path / "run", 8, 0.3, 90.0, 0)
    configs = configurations(load_records(run))
    text = summary_paragraph(configs, Labels.build(list(configs), fallback="run"))
    summary = json.loads((run / "summary.json").read_text())
    assert "\n" not in text
    assert text.startswith("The run `run` is `done`: batch size 8 (15 updates per epoch), 2 epochs (`budget=epochs`).")
    assert f"from {summary['initial_train_loss']:.4g} at the start to {summary['train_loss']:.4g} after 30 updates, 240 samples" in text
    (run / "findings.json").write_text("{}")  # a stale one from when this directory held a sweep
    assert write_json(run, None) is None and not (run / "findings.json").exists()


# --------------------------------------------------------------------------- logs that cannot be read
def _pngs(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "report").glob("*.png"))}


def test_unreadable_event_files_keep_the_existing_plots(tmp_path):
    """One run's event file cut mid-record, one's deleted, one's cut cleanly between records
    (the summary says 2 epochs were evaluated, the file holds 1): nothing is deleted or redrawn
    from less, and the report says what it could not read."""
    root = fake_sweep(tmp_path / "sweep", seeds=(0, 1))
    write_report(root)
    (root / "report" / "noise_scale.png").write_bytes((root / "report" / "loss_vs_epoch.png").read_bytes())  # an instrument's figure
    before = _pngs(root)
    assert {"loss_vs_epoch.png", "loss_vs_iteration.png", "loss_vs_samples.png", "loss_vs_time.png"} <= set(before)
    cut = next((root / "batch_size=8" / "seed=0").glob("events.out.tfevents.*"))
    cut.write_bytes(cut.read_bytes()[:-7])
    next((root / "batch_size=8" / "seed=1").glob("events.out.tfevents.*")).unlink()
    clean = root / "batch_size=1" / "seed=1"
    shutil.rmtree(clean)
    fake_run(clean, 1, 0.1, 100.0, 1, epochs=1)
    (clean / "summary.json").write_text(json.dumps({**json.loads((clean / "summary.json").read_text()), "epochs": 2}))
    text = write_report(root).read_text()
    assert _pngs(root) == before
    unread = next(line for line in text.splitlines() if line.startswith("**Could not read**"))
    assert "`batch_size=8, seed=0`: its event file `" in unread and "is cut short (" in unread
    assert "`batch_size=8, seed=1`: no event file" in unread
    assert "`batch_size=1, seed=1`: its log ends at epoch 1 of the 2 its summary records" in unread
    assert text.count("kept from the report of") == len(before) - 2  # every plot but the seed and noise figures
    assert "![noise_scale](report/noise_scale.png)" in text
    values = json.loads((root / "findings.json").read_text())["axes"]["samples"]["values"]
    assert {c: v["n"] for c, v in values.items()} == {"batch_size=1": 1, "batch_size=120": 2}  # left out of the findings


# --------------------------------------------------------------------------- plots
def _figure(root: Path, name: str):
    records = load_records(root)
    configs = configurations(records)
    labels = Labels.build(list(configs), fallback=root.name)
    spec = next(s for s in PLOTS if s.name == name)
    return draw(spec, lines_of(configs, labels), "", "loss")


def test_each_configuration_has_its_own_colour_and_its_seeds_share_it(sweep, tmp_path):
    fig = _figure(sweep, "loss_vs_epoch")
    legend = fig.legends[0]
    colours = {text.get_text(): to_hex(handle.get_color()) for text, handle in zip(legend.get_texts(), legend.legend_handles)}
    assert set(colours) == {f"{c}, mean of seeds 0–2" for c in CONFIGS}
    assert len(set(colours.values())) == 3
    bands = [to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections]
    assert sorted(bands) == sorted(colours.values())  # one seed band per configuration, in its colour
    # A seed that diverged is drawn on its own, dashed, in its configuration's colour.
    root = fake_sweep(tmp_path / "sweep")
    bad = root / "batch_size=8" / "seed=2" / "summary.json"
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "status": "diverged"}))
    lines = {line.get_label(): line for line in _figure(root, "loss_vs_epoch").axes[0].get_lines()}
    dashed = lines["batch_size=8, seed=2 (diverged)"]
    assert dashed.get_linestyle() == "--" and to_hex(dashed.get_color()) == to_hex(lines["batch_size=8, mean of seeds 0–1"].get_color())


@pytest.mark.parametrize("count", [3, 10, 12, 20, 25])
def test_the_palette_gives_distinct_colours(count):
    assert len({to_hex(c) for c in palette(count)}) == count


def test_legends_sit_outside_the_axes_and_sparse_lines_on_top(sweep):
    fig = _figure(sweep, "loss_vs_iteration")
    fig.canvas.draw()
    ax, legend = fig.axes[0], fig.legends[0]
    assert not ax.get_window_extent().overlaps(legend.get_window_extent())
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    full, single = lines["batch_size=120, mean of seeds 0–2"], lines["batch_size=1, mean of seeds 0–2"]
    assert full.get_marker() == "o" and full.get_zorder() > single.get_zorder()


# --------------------------------------------------------------------------- the section hook
def test_a_sweep_study_joins_the_report_with_one_entry(sweep, monkeypatch):
    seen = []
    study = types.ModuleType("fake_scaling_study")

    def markdown_section(root: Path) -> str | None:
        seen.append(root)
        return "## Batch-size scaling\n\nA study of the whole sweep."

    study.markdown_section = markdown_section
    monkeypatch.setitem(sys.modules, "fake_scaling_study", study)
    sections = (*SECTIONS[:-1], sweep_study("fake_scaling_study"), SECTIONS[-1])
    text = write_report(sweep, sections).read_text()
    assert seen == [sweep]
    headings = re.findall(r"^## .*", text, flags=re.M)
    assert headings.index("## Batch-size scaling") == headings.index("## Statistics over seeds") + 1
    study.markdown_section = lambda root: None  # nothing to say: no section
    assert "Batch-size scaling" not in write_report(sweep, sections).read_text()


# --------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_a_trained_sweeps_findings_are_its_logged_points(tmp_path):
    """BGD, SGD and mini-batch on iris, three seeds each, trained in-process: findings.json
    equals the values recomputed from the event files, and the equal-samples point is a logged one."""
    from omegaconf import OmegaConf

    from runner.train import train

    from conftest import compose_cfg

    root = tmp_path / "sweep"
    for regime in ("bgd", "sgd", "minibatch"):
        for seed in SEEDS:
            cfg = compose_cfg(["dataset=iris", "epochs=2", f"regime={regime}", f"seed={seed}"])
            cfg.output_dir = str(root / f"regime={regime}" / f"seed={seed}")
            train(cfg)
            OmegaConf.save(cfg, Path(cfg.output_dir) / "config.yaml")
    text = write_report(root).read_text()
    found = json.loads((root / "findings.json").read_text())["axes"]
    want = expected_findings(root)
    for axis in ("samples", "updates", "seconds"):
        assert found[axis]["at"] == pytest.approx(want[axis]["at"]) and found[axis]["best"] == want[axis]["best"], axis
        for config, value in found[axis]["values"].items():
            assert value["mean"] == pytest.approx(want[axis]["values"][config]["mean"], rel=1e-6), (axis, config)
    assert found["samples"]["at"] == 240  # 2 epochs of iris's 120 training samples
    assert found["samples"]["best"] == "regime=sgd"
    line = _bullet(text, "At equal samples")
    for config, value in found["samples"]["values"].items():
        assert f"`{config}` {value['mean']:.4g} ± " in line
