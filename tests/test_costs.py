"""The cost estimate printed before paid ingests: arithmetic, overrides, and the CLI hook."""

from __future__ import annotations

import pytest

from search_core.costs import Prices, estimate_ingest, needs_estimate
from search_core.errors import ConfigError


def test_titan_cost_is_images_times_the_price_and_names_it() -> None:
    cost = estimate_ingest(1_000_000, embedder="titan", index="local", dimension=1024,
                           prices=Prices())
    assert cost.titan_usd == pytest.approx(60.0)  # 1M x $0.00006
    assert cost.aoss_indexing_usd == 0 and cost.total_usd == pytest.approx(60.0)
    text = "\n".join(cost.lines())
    assert "1,000,000 x $6e-05" in text and "$60.00" in text and "SEARCH_PRICE_TITAN_IMAGE" in text


def test_opensearch_cost_uses_ocu_hours_of_the_expected_duration() -> None:
    prices = Prices(aoss_ocu_hour=0.24, aoss_indexing_ocus=2, images_per_s=100)
    cost = estimate_ingest(360_000, embedder="efficientnet", index="opensearch",
                           dimension=1280, prices=prices)
    assert cost.hours == pytest.approx(1.0)
    assert cost.aoss_indexing_usd == pytest.approx(0.48)
    assert cost.titan_usd == 0
    # 360k x 1280 x 4 bytes x 1.5 overhead = 2.76 GB at $0.024
    assert cost.aoss_storage_usd_month == pytest.approx(2.7648 * 0.024, rel=1e-3)
    assert "OCU" in "\n".join(cost.lines())
    assert cost.to_dict()["prices"]["aoss_ocu_hour"] == 0.24


def test_titan_speed_defaults_to_its_concurrency() -> None:
    cost = estimate_ingest(3600, embedder="titan", index="opensearch", dimension=1024,
                           titan_concurrency=10, prices=Prices())
    assert cost.images_per_s == pytest.approx(40.0)
    assert cost.hours == pytest.approx(0.025)


def test_prices_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCH_PRICE_TITAN_IMAGE", "0.00003")  # batch-inference price
    monkeypatch.setenv("SEARCH_COST_IMAGES_PER_S", "50")
    prices = Prices.from_env()
    assert prices.titan_image == 0.00003 and prices.images_per_s == 50
    assert estimate_ingest(1000, embedder="titan", index="local", dimension=1024,
                           prices=prices).titan_usd == pytest.approx(0.03)
    monkeypatch.setenv("SEARCH_PRICE_AOSS_OCU_HOUR", "cheap")
    with pytest.raises(ConfigError, match="SEARCH_PRICE_AOSS_OCU_HOUR"):
        Prices.from_env()


def test_only_paid_backends_get_an_estimate() -> None:
    assert needs_estimate("titan", "local")
    assert needs_estimate("efficientnet", "opensearch")
    assert not needs_estimate("efficientnet", "local")
    assert not needs_estimate("clip", "local")


def test_cli_index_prints_the_estimate_before_embedding_and_keeps_json_last(
    data_dir, grocery, tmp_path, monkeypatch, capsys
) -> None:
    """With a paid embedder configured the CLI prints the estimate once the listing is known
    (here the local model stands in for Titan, so nothing reaches the network)."""
    import dataclasses
    import json
    import shutil

    from search_core import cli
    from search_core.config import Settings
    from search_core.factory import build_pipeline

    folder = tmp_path / "few"
    folder.mkdir()
    for photo in sorted(next(grocery.glob("train/**/Banana")).glob("*.jpg"))[:3]:
        shutil.copy(photo, folder / photo.name)
    monkeypatch.setenv("SEARCH_DETECTOR", "none")
    pipeline = build_pipeline(Settings.from_env())
    pipeline.settings = dataclasses.replace(pipeline.settings, embedder="titan")
    monkeypatch.setattr(cli, "_pipeline", lambda settings=None: pipeline)

    assert cli.main(["index", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert "cost estimate for up to 3 images" in err and "$0.00" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["indexed"] == 3
    assert summary["cost_estimate"]["titan_usd"] == pytest.approx(3 * 0.00006)
