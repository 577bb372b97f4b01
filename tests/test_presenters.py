"""The page's texts without a page: presenters are plain functions of search_core values."""

from __future__ import annotations

from search_core import presenters as show
from search_core.pipeline import WHOLE


def test_dropdown_values_become_pipeline_regions() -> None:
    assert show.search_region("2", "") == 2  # 0-based detection number, as an int
    assert show.search_region(WHOLE, "") == WHOLE
    assert show.search_region("", "") == WHOLE
    assert show.search_region(show.MANUAL, "garbage") == WHOLE  # no box drawn yet
    box = show.search_region(show.MANUAL, "0.1,0.2,0.5,0.6")
    assert box == show.parse_box("0.1,0.2,0.5,0.6") and box is not None


def test_points_and_boxes_from_the_pointer_script() -> None:
    assert show.parse_point("0.25,0.75") == (0.25, 0.75)
    assert show.parse_point("") is None and show.parse_point("1,2,3") is None
    assert show.parse_box("1,2") is None


def test_empty_filters_are_left_out() -> None:
    assert show.search_filters(None, [], "  ") == {}
    assert show.search_filters("Fruit", ["apple"], " s3://b/p ") == {
        "category": "Fruit",
        "tags": ["apple"],
        "source_prefix": "s3://b/p",
    }


def test_progress_html_escapes_the_source() -> None:
    assert "No indexing job yet" in show.progress_html(None)
    text = show.progress_html(
        {"state": "running", "done": 1, "total": 4, "source": "<b>x</b>"}
    )
    assert "1 / 4 files (25 %)" in text and "<b>" not in text


def test_object_choices_without_a_photo() -> None:
    values = [value for _, value in show.object_choices(None)]
    assert values == [WHOLE, show.MANUAL]
