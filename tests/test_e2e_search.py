"""End to end on real data: index real GroceryStore photos with the real models, then query
with other photos of the same products (val split) and find their own class near the top."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from search_core.config import Settings
from search_core.evaluation import evaluate
from search_core.factory import build_pipeline

CLASSES = (
    "Banana",
    "Lemon",
    "Granny-Smith",
    "Red-Bell-Pepper",
    "Arla-Standard-Milk",
    "Oatly-Natural-Oatghurt",
    "Yellow-Onion",
    "Tomato",
    "Cucumber",
    "Carrots",
)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, grocery: Path):
    tmp = tmp_path_factory.mktemp("e2e")
    corpus, queries = tmp / "corpus", tmp / "queries"
    for name in CLASSES:
        for split, target, count in (("train", corpus, 10), ("val", queries, 3)):
            matches = list(grocery.glob(f"{split}/**/{name}"))
            if not matches:
                continue
            (target / name).mkdir(parents=True, exist_ok=True)
            for photo in sorted(matches[0].glob("*.jpg"))[:count]:
                shutil.copy(photo, target / name / photo.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEARCH_DATA_DIR", str(tmp / "data"))
        patch.setenv("SEARCH_FOLDER_ROOTS", str(tmp))
        settings = Settings.from_env()
    pipeline = build_pipeline(settings)
    report = pipeline.index_source(str(corpus))
    assert report.failed == 0 and report.indexed == pipeline.index.count() >= 80
    return pipeline, queries


@pytest.mark.parametrize("choice", ["whole", "auto"])
def test_queries_find_their_own_class(indexed: tuple, choice: str) -> None:
    pipeline, queries = indexed
    result = evaluate(pipeline, str(queries), choice=choice).to_dict()
    assert result["queries"] >= 25 and result["failed_queries"] == 0
    # Ten classes, ten photos each: chance for recall@5 is about 0.4.
    assert result["recall@5"] >= 0.7, result
    assert result["recall@1"] >= 0.5, result


def test_a_shelf_photo_finds_its_product(indexed: tuple, scenes: Path) -> None:
    pipeline, _ = indexed
    analyzed = pipeline.analyze((scenes / "grocery_Banana.jpg").read_bytes())
    hits = pipeline.search(analyzed, "auto", k=5)
    assert len(hits) == 5
    assert len({hit.item.sha256 for hit in hits}) == 5  # no duplicates in a result list
    assert "Banana" in [hit.item.label for hit in hits[:3]]
