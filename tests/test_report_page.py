"""The report a researcher reads: summary and warnings first, one number formatter shared with
`lmscale fit`, and the page checked in a real headless Chromium at 1400 px and at 420 px."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import numbers as fmt
from analysis import report_summary
from analysis.fit import fit_chinchilla
from analysis.laws import Fit, flag_bounds
from analysis.report import write_report
from analysis.report_tables import fit_table
from analysis.sweep import Sweep
from tests.conftest import run_cli
from tests.test_emergence import logistic
from tests.test_plots_report import E, make_sweep

# lmscale's CPU demo before its (N, D) grid: six sizes at 4 tokens per parameter, and their final losses.
DEMO_PARAMS = np.array([34976, 69824, 119104, 217664, 473952, 828544], float)
DEMO_LOSS = np.array([2.535, 1.873, 1.687, 1.576, 1.450, 1.330])
TASKS = {"copy": 4.9, "reverse": 5.6, "cycle": 5.8, "recall": 7.0}  # log10 N where exact match crosses 0.5
BOOTSTRAP = 16


def write_demo_sweep(root: Path, params=DEMO_PARAMS, loss=DEMO_LOSS, per_param=4.0, seeds=None) -> Path:
    """A sweep directory shaped like the demo's: results.csv, each run's summary and learning curve, and
    a few-shot table of four tasks at 0 and 3 shots."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows, shots = [], []
    for i, (n, final) in enumerate(zip(params, loss, strict=True)):
        d = per_param * n
        run_id = f"run{i}-s{(seeds or [0] * len(params))[i]}"
        summary = {"run_id": run_id, "status": "completed", "params": n, "tokens": d, "flops_6nd": 6 * n * d}
        summary |= {"final_loss": final * 1.01, "final_val_loss": final, "data_entropy_rate": None}
        rows.append(summary)
        (root / run_id).mkdir()
        (root / run_id / "summary.json").write_text(json.dumps(summary))
        curve = [{"step": s, "tokens": d * s / 8, "flops": 6 * n * d * s / 8, "loss": final * (1 + 2 / s)}
                 for s in range(1, 9)]  # fmt: skip
        (root / run_id / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        for task, mid in TASKS.items():
            for k in (0, 3):
                p = float(np.clip(logistic(np.log10(n), mid - 0.3 * (k > 0)) + rng.normal(0, 0.01), 0, 1))
                shots.append({"run_id": run_id, "params": n, "flops": 6 * n * d, "tokens": d, "task": task,
                              "shots": k, "metric": "exact_match", "value": p, "stderr": 0.01,
                              "n": 500})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    pd.DataFrame(shots).to_csv(root / "fewshot.csv", index=False)
    return root


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> dict[str, Path]:
    sweep = write_demo_sweep(tmp_path_factory.mktemp("sweeps") / "cpu_demo")
    return write_report(sweep, tmp_path_factory.mktemp("report"), bootstrap=BOOTSTRAP, seed=0)


def test_number_formatter_writes_three_figures_si_sizes_powers_of_ten_and_percentages():
    assert [fmt.number(v) for v in (1.38, 0.06712, 5.194e5, 1317.0, 2.6e-8)] == [
        "1.38", "0.0671", "5.19×10⁵", "1320", "2.6×10⁻⁸"
    ]  # fmt: skip
    assert [fmt.size(v) for v in (828544, 3313664, 999_700, 950)] == ["829K", "3.31M", "1M", "950"]
    assert fmt.flops(1.99316e13) == "1.99×10¹³" and fmt.flops(9.996e12) == "1×10¹³"
    assert fmt.percent(0.06712) == "6.71%" and fmt.percent(-0.0345, signed=True) == "-3.45%"
    assert fmt.interval(2.6e-8, 1.511, (True, True)) == "(< 2.6×10⁻⁸, > 1.51)"
    assert fmt.interval(0.0612, 0.751) == "[0.0612, 0.751]"


@pytest.mark.slow  # ~14 s on 2 cores: approach 3's 4500-start fit and its bootstrap, in the CLI and here
def test_fit_text_output_and_report_table_write_the_same_numbers(tmp_path):
    """`lmscale fit --law approach3` and the report's parameter table, on the same fit."""
    rng = np.random.default_rng(1)
    n = np.repeat(np.geomspace(1e6, 1e8, 5), 3)
    d = n * np.tile([5.0, 20.0, 80.0], 5)
    loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * (1 + rng.normal(0, 0.002, len(n)))
    csv = tmp_path / "runs.csv"
    pd.DataFrame({"params": n, "tokens": d, "loss": loss}).to_csv(csv, index=False)
    proc = run_cli("fit", csv, "--law", "approach3", "--bootstrap", "8", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    fit = fit_chinchilla(n, d, loss, bootstrap=8, seed=3)
    for name, estimate, interval in fit_table(fit)[1]:
        line = rf"^\s+{name} = {re.escape(estimate)}  95% CI {re.escape(interval)} "
        assert re.search(line, proc.stdout, re.M), (
            name, estimate, interval, proc.stdout
        )  # fmt: skip


def test_warnings_box_lists_an_unidentified_E_and_an_alpha_interval_on_its_bound():
    """Planted: the demo's frontier E, its interval over 7 decades, and an alpha whose interval reaches 0."""
    frontier = Fit("power", {"E": 1.2, "A": 5.3e5, "alpha": 0.541}, 1e-4, 6)
    frontier.ci = {"E": (1.5e-7, 1.25), "A": (8.6, 7.4e7), "alpha": (0.0004, 0.75)}
    flag_bounds(frontier, lowest_loss=1.33)
    sweep = Sweep(None, None, None, {"power": frontier}, {}, {"chinchilla": "approach3: 5 points cannot "
                  "determine 5 parameters (need at least 6)"})  # fmt: skip
    box = report_summary.warnings(sweep, ["run9-s0"])
    assert any(w.startswith("Frontier law L(C): E is not identified: its 95% interval") for w in box), box
    assert any(
        w.startswith("Frontier law L(C): alpha's 95% interval") and "lower edge at 0" in w for w in box
    )
    assert "Approach 3 not fitted: 5 points cannot determine 5 parameters (need at least 6)." in box
    assert "1 run(s) excluded from every fit (not completed): run9-s0." in box


@pytest.mark.slow  # ~40 s on 2 cores: the report's fits, bootstraps and figures
def test_demo_shaped_report_warns_that_E_is_not_identified_and_puts_the_summary_first(demo_report):
    md = demo_report["markdown"].read_text()
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert headings[0] == "Summary" and headings[1] == "How loss falls with compute"
    summary, rest = md.split("## How loss falls with compute", 1)
    assert "> **Warnings**" in summary and "E is not identified" in summary
    assert "Held-out prediction:" in summary and "mean |error|: frontier law" in summary
    assert "the data's entropy rate (the true floor) is unknown" in summary
    assert "no size was trained with more than one seed" in summary
    assert rest.lstrip().startswith("[![Loss against compute")  # the hero figure, right under the summary
    for anchor in re.findall(r"\]\(#([\w-]+)\)", md):
        assert f'<a id="{anchor}"></a>' in md


@pytest.mark.slow  # ~50 s on 2 cores: every law fitted and bootstrapped, twice (all runs, then held out)
def test_isoflop_report_tables_exponents_side_by_side_and_compares_E_with_the_known_floor(tmp_path):
    sweep = make_sweep(tmp_path / "isoflop", fewshot=False)  # Hoffmann et al.'s law, E = 1.69
    table = pd.read_csv(sweep / "results.csv").assign(data_entropy_rate=E)
    repeat = table.iloc[[2, 7]].assign(run_id=["seed1-a", "seed1-b"])
    repeat["final_val_loss"] *= 1.004
    pd.concat([table, repeat]).to_csv(sweep / "results.csv", index=False)
    md = write_report(sweep, tmp_path / "out", bootstrap=BOOTSTRAP)["markdown"].read_text()
    for approach in (2, 3):
        assert re.search(rf"\| Approach {approach} \| [\d.]+ \| [\[(][\d.]+, [\d.]+[\])] \|", md), approach
    assert "The 95% intervals for a of Approach 2 and Approach 3 " in md
    floor = r"approach 3's E = [\d.]+ \[[\d.]+, [\d.]+\]; the data's entropy rate is 1\.69 nats/token"
    assert re.search(floor, md)
    assert re.search(r"repeated seeds at 2 \(N, D\) vary by [\d.]+%", md)
    assert re.search(r"\| Approach 3 \| 5 \| [\d.]+% \|", md)  # the five held-out runs of the largest budget


# -- the page in a real browser ------------------------------------------------------------------------
def _browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install .[dev])"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


OVERFLOW = """
const w = document.documentElement.clientWidth, out = [];
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('.scroll')) continue;
  const r = el.getBoundingClientRect();
  if (r.right > w + 1) out.push(el.tagName + ' ' + (el.className || '') + ' ' + Math.round(r.right));
}
return out;"""
LAYOUT = """
const q = s => document.querySelector(s), top = el => el.getBoundingClientRect().top + window.scrollY;
const hero = q('figure.hero');
return {images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
        toc: [...document.querySelectorAll('nav a')].map(
          a => [a.hash, !!document.getElementById(a.hash.slice(1))]),
        first: q('main section').id, summaryTop: top(q('#summary')),
        heroBottom: top(hero) + hero.offsetHeight,
        height: document.documentElement.scrollHeight, screen: window.innerHeight,
        openDetails: document.querySelectorAll('details[open]').length};"""


@pytest.mark.browser
def test_report_page_in_headless_chromium_at_1400_and_420_px(demo_report):
    driver = _browser()
    try:
        url = demo_report["html"].resolve().as_uri()
        driver.set_window_size(1400, 900)
        driver.get(url)
        wide = driver.execute_script(LAYOUT)
        assert wide["images"] and all(ok for _, ok in wide["images"]), wide["images"]
        assert wide["toc"] and all(ok for _, ok in wide["toc"]), wide["toc"]
        assert wide["first"] == "summary" and wide["openDetails"] == 0
        assert wide["heroBottom"] <= 2 * wide["screen"], wide  # summary and hero within two screens
        assert wide["height"] <= 6 * wide["screen"], wide
        driver.set_window_size(420, 900)
        driver.get(url)
        assert driver.execute_script(OVERFLOW) == []
        assert all(ok for _, ok in driver.execute_script(LAYOUT)["images"])
    finally:
        driver.quit()
