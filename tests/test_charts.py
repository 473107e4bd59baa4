"""The UI's inline SVG charts: numbers on hover, escaped text, pending stages drawn as pending."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from infinstruct.charts import colors, funnel, stacked_bars


def test_stacked_bars_stack_each_runs_series_with_exact_numbers():
    svg = stacked_bars(
        "Funnel <last runs>",
        [("run-1", [("kept", 24), ("dedup", 3)]), ("run-2", [("kept", 0)])],
        colors(["kept", "dedup"], {"kept": "#2da44e"}),
    )
    ET.fromstring(svg)  # well-formed
    assert (
        "Funnel &lt;last runs&gt;" in svg
        and "<title>run-1: kept 24</title>" in svg
        and "<title>run-1: dedup 3</title>" in svg
    )
    assert 'fill="#2da44e"' in svg and "run-2: kept" not in svg  # a zero draws nothing
    assert ">30</text>" in svg  # the axis reaches past 27 in round steps


def test_funnel_draws_unfinished_stages_as_pending_not_as_numbers():
    svg = funnel("Records standing", [("input lines", 45, ""), ("dedup", 29, ""), ("select", None, "pending")])
    ET.fromstring(svg)
    assert "<title>dedup: 29</title>" in svg and ">pending</text>" in svg and "select: " not in svg
