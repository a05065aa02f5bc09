"""The dashboard in a real browser: what a person looks at after running a sweep.

A small ``experiment=gd_compare`` sweep is run as a user runs it, the board is started from
the command it prints, and headless Chromium (driven by selenium) opens the tabs a person
would: Time Series (every run's per-iteration loss drawn with every point), the run list
(runs only), Custom Scalars (every run's curve drawn) and HParams (every run with its
metrics). Each tab is saved as a screenshot in the test's tmp dir and, with
``RUNNER_SCREENSHOTS=<dir>``, in that directory too.

The Time Series charts are read with ``?forceSVG=true`` (TensorBoard's own switch to its SVG
renderer, the one it uses without WebGL): the same chart component, but each line is a
``<path>`` whose vertices can be counted, where the default WebGL canvas is opaque. Custom
Scalars and HParams are Polymer elements inside shadow roots, found by a small recursive query.

Needs ``chromium`` and ``chromedriver`` (Debian packages of those names) and the ``browser``
extra (selenium); skipped, saying so, when the browser or driver is missing.

``python tests/test_browser.py SWEEP_DIR OUT_DIR`` saves the screenshots of an existing sweep
(how ``docs/images/board_*.png`` were made).
"""

from __future__ import annotations

import os
import re
from collections import Counter
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from boardutil import Job, board, gd_compare_sweep, jobs_of

pytestmark = pytest.mark.browser

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1400, 1000)
HPARAMS_WIDTH = 1920  # the docs' HParams picture: every one of the five metric columns in view
UI_S = 60.0  # the page's first data, on a busy machine

# Every element matching a CSS selector, inside shadow roots too (Polymer's dashboards).
DEEP_ALL = """
function deepAll(root, selector, out = []) {
  root.querySelectorAll(selector).forEach(e => out.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) deepAll(e.shadowRoot, selector, out); });
  return out;
}
function vertices(path) { return ((path.getAttribute('d') || '').match(/[ML]/g) || []).length; }
"""
TIME_SERIES_RUNS = DEEP_ALL + """
return deepAll(document, 'runs-selector tb-data-table-content-row').map(row => ({
  run: row.getAttribute('data-id').replace(/^[^/]*\\//, ''),
  color: getComputedStyle(row.querySelector('.run-color-swatch')).backgroundColor,
}));
"""
TIME_SERIES_LINES = DEEP_ALL + """
const card = deepAll(document, 'scalar-card').find(c => {
  const name = c.querySelector('.heading .name');
  return name && name.textContent.replace(/\\s/g, '') === arguments[0];
});
if (!card) return null;
return Array.from(card.querySelectorAll('.series-view > svg > path')).map(p => ({
  color: getComputedStyle(p).stroke, vertices: vertices(p),
}));
"""
CUSTOM_SCALARS_CHARTS = DEEP_ALL + """
return deepAll(document, 'tf-custom-scalar-multi-line-chart-card').map(card => ({
  title: deepAll(card.shadowRoot, '.heading-label.name').map(e => e.textContent.trim()).join(''),
  lines: deepAll(card.shadowRoot, '.line-plot:not(.ghost) path').map(vertices).filter(n => n > 0),
}));
"""
IGNORE_OUTLIERS_OFF = DEEP_ALL + """
const box = deepAll(document, 'paper-checkbox').find(b => b.textContent.includes('Ignore outliers'));
if (!box) return false;
if (box.checked) box.click();
return !box.checked;
"""
SHOW_METRICS = DEEP_ALL + """
const boxes = deepAll(document, 'paper-checkbox.metric-checkbox').filter(b => arguments[0].includes(b.textContent.trim()));
boxes.forEach(b => { if (!b.checked) b.click(); });
return boxes.length === arguments[0].length;
"""
HPARAMS_TABLE = DEEP_ALL + """
const grid = deepAll(document, 'vaadin-grid#sessionGroupsTable')[0];
if (!grid) return null;
const text = cell => {
  const slot = cell.querySelector('slot');
  const node = slot && slot.assignedNodes()[0];
  return node ? node.textContent.trim() : null;
};
return {
  headers: deepAll(grid.shadowRoot, 'thead th').map(text),
  rows: deepAll(grid.shadowRoot, 'tbody tr').filter(tr => !tr.hidden).map(tr => Array.from(tr.querySelectorAll('td')).map(text)),
};
"""


# ----------------------------------------------------------------------------------- plumbing
def make_driver():
    """Headless Chromium with a fixed window, never through a proxy."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-proxy-server",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(check: Callable[[], Any], what: str, driver, timeout: float = UI_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` with the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"the page never showed {what} within {timeout:.0f} s; last answer: {last!r}")


def open_tab(driver, url: str, fragment: str, query: str = "") -> None:
    # A fresh page per tab: a hash change alone can keep the previous tab's state.
    driver.get("about:blank")
    driver.get(f"{url}{query}#{fragment}")


def screenshot(driver, name: str, dirs: list[Path]) -> None:
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(directory / f"{name}.png"))


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Iterator[tuple[str, Path, list[Job], str]]:
    """A small gd_compare sweep (three batch sizes, two seeds each) and the board its printed
    command starts: (url, root, jobs, the URL the board printed)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    root, command, _ = gd_compare_sweep(tmp_path_factory.mktemp("user"), "batch_size=full,1,32", "seed=0,1")
    with board(command, cwd=root) as (started, url):
        yield url, root, jobs_of(root), started.printed_url


@pytest.fixture(scope="module")
def driver(dashboard):
    chrome = make_driver()
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> list[Path]:
    """Where screenshots go: the test's tmp dir, and ``$RUNNER_SCREENSHOTS`` if set."""
    dirs = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("RUNNER_SCREENSHOTS"):
        dirs.append(Path(os.environ["RUNNER_SCREENSHOTS"]))
    return dirs


# -------------------------------------------------------------------------------------- tests
def test_time_series_draws_every_point_of_every_run(dashboard, driver, shots):
    url, root, jobs, _ = dashboard
    open_tab(driver, url, "timeseries", "?forceSVG=true")
    listed = {r["run"]: r["color"] for r in wait_for(
        lambda: {job.run for job in jobs} <= {r["run"] for r in driver.execute_script(TIME_SERIES_RUNS)}
        and driver.execute_script(TIME_SERIES_RUNS), "every run in the run list", driver)}
    colors = [listed[job.run] for job in jobs]
    assert len(set(colors)) == len(jobs), listed  # each run its own colour

    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "metrics-tag-filter input").send_keys("^loss/train_iter$")
    expected = Counter(job.iterations for job in jobs)

    def drawn() -> Counter | None:
        # Every job's line with all its points (the seed aggregates' mean lines come on top;
        # with more runs than the palette has colours, a colour can name two runs).
        lines = driver.execute_script(TIME_SERIES_LINES, "loss/train_iter") or []
        counts = Counter(line["vertices"] for line in lines)
        return counts if not expected - counts else None

    try:
        wait_for(drawn, "a loss/train_iter line with every point for every run", driver)
    finally:
        screenshot(driver, "board_time_series_svg", shots)
    # A person sees the default (WebGL) rendering: keep that picture too.
    open_tab(driver, url, "timeseries")
    wait_for(lambda: driver.execute_script(DEEP_ALL + "return deepAll(document, 'scalar-card canvas').length"),
             "a chart canvas", driver)
    time.sleep(2)  # the charts' first frames
    screenshot(driver, "board_time_series", shots)


def test_the_run_list_holds_only_runs(dashboard, driver, shots):
    from runner.aggregate import AGGREGATE_FILE, SUMMARY_FILE

    url, root, jobs, _ = dashboard
    open_tab(driver, url, "timeseries")
    runs = wait_for(
        lambda: (r := [x["run"] for x in driver.execute_script(TIME_SERIES_RUNS)])
        and {job.run for job in jobs} <= set(r) and r,
        "every run in the run list", driver)
    screenshot(driver, "board_runs", shots)
    # Each entry is a run directory (its summary.json) or a seed group's aggregate, named
    # gd_compare/<path in the sweep>: no helper runs (layout, hparams, report images), no
    # event-file subfolder as a run name.
    def directory(run: str) -> Path:
        assert run.startswith("gd_compare/"), run
        return root / run.removeprefix("gd_compare/")

    not_runs = [r for r in runs if not ((directory(r) / SUMMARY_FILE).is_file() or (directory(r) / AGGREGATE_FILE).is_file())]
    assert not not_runs, f"the run list holds entries that are not runs: {not_runs} (all: {runs})"
    aggregates = {f"gd_compare/{p.parent.relative_to(root).as_posix()}" for p in root.rglob(AGGREGATE_FILE)}
    assert sorted(runs) == sorted({job.run for job in jobs} | aggregates)


def test_custom_scalars_draw_every_run(dashboard, driver, shots):
    url, root, jobs, _ = dashboard
    open_tab(driver, url, "custom_scalars")
    # Off: with it on, a point far outside the zoomed range (SGD's first losses) is cropped
    # from the drawn path, which would make "every point is drawn" uncountable.
    assert wait_for(lambda: driver.execute_script(IGNORE_OUTLIERS_OFF), "the 'Ignore outliers' checkbox", driver)
    iterations = sorted(job.iterations for job in jobs)

    def charts() -> list[dict] | None:
        found = driver.execute_script(CUSTOM_SCALARS_CHARTS)
        # Every job's line with all its points (seed aggregates add their mean lines), and no
        # chart still waiting for its data: the cards load one by one, so under load the first
        # can be complete while a later one has not drawn yet.
        complete = any(not Counter(iterations) - Counter(chart["lines"]) for chart in found)
        return found if complete and all(chart["lines"] for chart in found) else None

    try:
        found = wait_for(charts, f"every chart drawn, one with a line per run of {iterations} points", driver)
    finally:
        screenshot(driver, "board_custom_scalars", shots)
    # No empty panel: every chart on the tab draws a line.
    assert all(chart["lines"] for chart in found), found


def test_hparams_lists_every_run_with_its_metrics(dashboard, driver, shots):
    url, root, jobs, _ = dashboard
    open_tab(driver, url, "hparams")
    runs = {job.run: job for job in jobs}

    def table() -> dict | None:
        found = driver.execute_script(HPARAMS_TABLE)
        return found if found and {row[0] for row in found["rows"]} == set(runs) else None

    try:
        found = wait_for(table, f"a table row for each of {sorted(runs)}", driver)
    finally:
        screenshot(driver, "board_hparams", shots)
    # Every column shown holds a value in every row (no run without its metrics).
    for row in found["rows"]:
        empty = [h for h, cell in zip(found["headers"], row) if h != "Show Metrics" and not cell]
        assert not empty, (row[0], empty, found["headers"])
    # The metrics a comparison reads, ticked in the side pane as a person would (TensorBoard
    # shows only the first few metrics by default).
    metrics = (("loss/train_full", "train_loss"), ("loss/val", "val_loss"), ("metric/acc/val", "val_acc"))
    wanted = [metric for metric, _ in metrics]
    found = wait_for(lambda: driver.execute_script(SHOW_METRICS, wanted) and (t := table()) and set(wanted) <= set(t["headers"]) and t,
                     f"the metric columns {wanted}", driver)
    headers = found["headers"]
    assert headers[0] == "Trial ID" and "batch_size" in headers
    for row in found["rows"]:
        cells = dict(zip(headers, row))
        summary = runs[row[0]].summary
        # TensorBoard prints 5 significant digits.
        for metric, key in metrics:
            assert float(cells[metric]) == pytest.approx(summary[key], rel=1e-4), (row[0], metric)
        batch = summary["n_train"] if summary["regime"] == "bgd" else summary["batch_size"]
        assert float(cells["batch_size"]) == batch


SMOOTHING = DEEP_ALL + """
const box = deepAll(document, '.scalars-smoothing input.slider-input')[0];
return box ? box.value : null;
"""
FIRST_CARDS = DEEP_ALL + "return deepAll(document, 'scalar-card .heading .name').map(e => e.textContent.replace(/\\s/g, ''));"
LOSS_CARD = re.compile(r"(^|/)loss/")
GROUP_TITLES = DEEP_ALL + "return deepAll(document, '.card-group .group-title').map(e => e.textContent.trim());"


def configuration(job: Job) -> str:
    """A job's configuration: its path in the sweep without the seed (``batch_size=8``)."""
    return job.path.parent.name if job.path.name.startswith("seed=") else job.path.name


def test_the_printed_link_opens_the_comparison_view(dashboard, driver, shots):
    """The URL as the board prints it: smoothing 0, one colour per configuration shared by its
    seeds, the loss cards first, and every configuration's line in the pinned per-update card."""
    url, root, jobs, printed = dashboard
    assert printed.startswith(url) and "smoothing=0" in printed
    open_tab(driver, printed.split("#")[0], "timeseries")
    assert wait_for(lambda: driver.execute_script(SMOOTHING), "the smoothing setting", driver) == "0"
    cards = wait_for(lambda: driver.execute_script(FIRST_CARDS), "a card", driver)
    assert LOSS_CARD.search(cards[0]), cards[:5]
    assert cards[:5] == ["vs_samples/loss/train_full", "vs_samples/loss/val", "loss/train_full", "loss/val", "loss/train_iter"]
    # Below the pins, the tag groups in TensorBoard's own order: the loss first (of the two it
    # opens expanded), the three other x-axes last.
    groups = wait_for(lambda: driver.execute_script(GROUP_TITLES), "the tag groups", driver)
    assert groups == ["loss", "lr", "metric", "overfit_gap", "time", "update", "vs_iteration", "vs_samples", "vs_time_ms"], groups
    listed = {r["run"]: r["color"] for r in wait_for(
        lambda: {job.run for job in jobs} <= {r["run"] for r in driver.execute_script(TIME_SERIES_RUNS)}
        and driver.execute_script(TIME_SERIES_RUNS), "every run in the run list", driver)}
    screenshot(driver, "board_printed_link", shots)
    colours: dict[str, set[str]] = {}
    for job in jobs:
        colours.setdefault(configuration(job), set()).add(listed[job.run])
    assert all(len(c) == 1 for c in colours.values()), colours  # seeds of one configuration: one colour
    assert len({c.pop() for c in colours.values()}) == len(colours) == 3, listed  # configurations: distinct
    by_colour = {listed[job.run]: job.iterations for job in jobs}

    # The same link drawn as SVG (TensorBoard's own switch), so each line's points can be counted.
    base, query = printed.split("#")[0].split("?", 1)
    open_tab(driver, f"{base}?forceSVG=true&{query}", "timeseries")

    def drawn() -> dict[str, int] | None:
        # The pinned card is below the fold and TensorBoard draws only cards in view: scroll to it.
        driver.execute_script(DEEP_ALL + """
          const card = deepAll(document, 'scalar-card').find(c => (c.querySelector('.heading .name') || {}).textContent
            && c.querySelector('.heading .name').textContent.replace(/\\s/g, '') === 'loss/train_iter');
          if (card) card.scrollIntoView();""")
        lines = driver.execute_script(TIME_SERIES_LINES, "loss/train_iter") or []  # the first: the pinned card
        counts: dict[str, int] = {}
        for line in lines:
            counts[line["color"]] = max(counts.get(line["color"], 0), line["vertices"])
        return counts if all(counts.get(c) == n for c, n in by_colour.items()) else None

    wait_for(drawn, f"each configuration's line in the pinned loss/train_iter card ({by_colour})", driver)


def test_hparams_shows_the_loss_first_without_ticking(dashboard, driver, shots):
    url, root, jobs, _ = dashboard
    open_tab(driver, url, "hparams")
    runs = {job.run: job for job in jobs}
    found = wait_for(lambda: (t := driver.execute_script(HPARAMS_TABLE)) and {row[0] for row in t["rows"]} == set(runs) and t,
                     "a table row per run", driver)
    headers = found["headers"]
    curated = ["loss/val", "loss/train_full", "metric/acc/val", "metric/acc/train", "time/train_s"]
    metrics = [h for h in headers if h in curated]
    assert metrics == curated, headers  # all five shown, the loss first, no ticking
    # The swept keys lead the hyperparameters, integers as integers.
    # The keys that differ lead the hyperparameters (TensorBoard orders them by name), integers as integers.
    assert set(headers[2:5]) == {"batch_size", "regime", "seed"}, headers
    for row in found["rows"]:
        cells = dict(zip(headers, row))
        summary = runs[row[0]].summary
        assert cells["seed"] == str(summary["seed"]) and cells["batch_size"] == str(summary["hparams"]["batch_size"])
        assert float(cells["loss/val"]) == pytest.approx(summary["val_loss"], rel=1e-4), row[0]
        assert float(cells["loss/train_full"]) == pytest.approx(summary["train_loss"], rel=1e-4), row[0]
        assert float(cells["time/train_s"]) == pytest.approx(summary["train_seconds"], rel=1e-4), row[0]


# ------------------------------------------------------------------------- docs screenshots
def save_screenshots(sweep: Path, out: Path) -> None:
    """Start the board on ``sweep`` as a run prints it, open the URL it prints, and save Time
    Series (as the link opens it), Custom Scalars and HParams (as they open) to ``out``."""
    import shlex

    from runner.board import board_command

    with board(shlex.split(board_command(sweep)), cwd=sweep) as (started, url):
        chrome = make_driver()
        try:
            for fragment, name, ready in (
                ("timeseries", "board_time_series", "return deepAll(document, 'scalar-card canvas').length"),
                ("custom_scalars", "board_custom_scalars",
                 "return deepAll(document, 'tf-custom-scalar-multi-line-chart-card').length"),
                ("hparams", "board_hparams", "return deepAll(document, 'vaadin-grid#sessionGroupsTable').length"),
            ):
                if fragment == "timeseries":
                    chrome.get(started.printed_url)  # exactly as printed
                else:
                    open_tab(chrome, url, fragment)
                wait_for(lambda: chrome.execute_script(DEEP_ALL + ready), fragment, chrome)
                if fragment == "hparams":  # the constant columns (budget) unticked: the metrics in view
                    chrome.set_window_size(HPARAMS_WIDTH, WINDOW[1])
                    chrome.execute_script(DEEP_ALL + """
                      for (const box of deepAll(document, 'paper-checkbox.hparam-checkbox')) {
                        if (box.checked && !arguments[0].includes(box.textContent.trim())) box.click();
                      }""", ["batch_size", "regime", "seed"])
                time.sleep(10)  # let every chart load and draw
                screenshot(chrome, name, [out])
        finally:
            chrome.quit()


if __name__ == "__main__":
    save_screenshots(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
