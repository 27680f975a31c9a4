"""The emergence figures read in print: no text overlaps, no empty panel, a legend naming every line."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.emergence import emergence_midpoints
from analysis.emergence_plots import discrete_continuous_figure, headline_figure
from analysis.evaltable import Options, load_table
from tests.test_emergence_cli import CHANCE, MAPPING, lm_eval_table

LONG = {"sharp": "hendrycksTest-high_school_macroeconomics", "smooth": "arc_challenge", "flat": "mmlu"}


def _texts(fig) -> list:
    """Every non-empty text the figure draws (titles, axis labels, tick labels in view, the legend's),
    with its box in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.legends[0].get_texts()]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            at = 0 if axis is ax.xaxis else 1
            texts += [t for t in axis.get_ticklabels() if lo <= t.get_position()[at] <= hi]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]


def _overlaps(texts) -> list[tuple[str, str]]:
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(texts, 2) if ba.overlaps(bb)]


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figures")
    raw = lm_eval_table(seed=1)
    raw["Task"] = raw["Task"].map(LONG)
    raw.to_csv(tmp / "evals.csv", index=False)
    roles = dict(zip(MAPPING[0::2], MAPPING[1::2], strict=True))
    columns = {k.removeprefix("--").removesuffix("-col"): v for k, v in roles.items()} | {"group": "Family"}
    table = load_table(tmp / "evals.csv", Options(columns, chance={t: CHANCE for t in LONG.values()}))
    return table, emergence_midpoints(table, "params", bootstrap=20)


def test_headline_figure_has_a_panel_per_task_no_overlapping_text_and_names_every_line(evals):
    table, mids = evals
    fig = headline_figure(table, mids, "params")
    assert sorted(ax.get_title().replace("\n", " ") for ax in fig.axes if ax.get_title()) == sorted(
        f"{t}: acc_norm" for t in LONG.values()
    )
    assert all(ax.lines for ax in fig.axes[:3])  # no empty panel
    heights = [np.ptp(s[:, 1]) for ax in fig.axes for c in ax.collections for s in c.get_segments()]
    assert np.all(np.asarray(heights) > 0)  # error bars from the binomial n where no stderr is given
    texts = _texts(fig)
    assert _overlaps(texts) == []
    width, height = fig.canvas.get_width_height()
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width and b.y1 <= height for _, b in texts)
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {"0-shot", "5-shot", "pythia", "pythia-deduped", "chance", "midpoint, 95% CI"}


def test_many_panels_over_under_two_decades_keep_their_text_apart(evals):
    table, mids = evals
    sizes = np.sort(table["params"].unique())
    narrow = table[table["params"] <= sizes[0] * 80]  # 1.9 decades: ticks at 1, 2 and 5
    # nine panels: three rows of a four-column grid, the last one short (the midpoints are only drawn)
    copies = range(3)
    narrow = pd.concat([narrow.assign(task=narrow["task"] + f" ({k})") for k in copies], ignore_index=True)
    mids = pd.concat([mids.assign(task=mids["task"] + f" ({k})") for k in copies], ignore_index=True)
    fig = headline_figure(narrow, mids, "params")
    assert len(fig.axes) == 9 and _overlaps(_texts(fig)) == []
    assert discrete_continuous_figure(narrow, mids, "params") is not None  # perplexity beside accuracy
