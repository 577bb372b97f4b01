"""Automatic tags, filters (local and OpenSearch), near-duplicates, object picking and label
placement: real models on real images where a model is involved."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_opensearch import FAKE_KEY, FAKE_SECRET, FakeOpenSearch
from helpers import SHARED_DATA
from PIL import Image

from search_core.aws import clients
from search_core.aws.opensearch_index import OpenSearchIndex
from search_core.captions import result_caption
from search_core.config import Settings
from search_core.crop import draw_detections, object_at, place_labels
from search_core.duplicates import collapse_near_duplicates, near_duplicate_pairs
from search_core.errors import ItemNotFoundError, SearchError
from search_core.factory import build_pipeline
from search_core.filters import matches, parse_filters
from search_core.local_index import LocalIndex
from search_core.tags import category_of, matching_tags, short_source
from search_core.types import Box, Detection, ItemMeta, SearchHit


def _item(n: int, **extra: object) -> ItemMeta:
    return ItemMeta(uri=f"/cat/{extra.get('category', 'X')}/{n}.jpg", sha256=f"{n:064x}",
                    label=f"L{n % 2}", extra=dict(extra))


# --------------------------------------------------------------------------- pure functions


def test_category_is_the_top_folder_below_the_source() -> None:
    assert category_of("/data/train/Fruit/Apple/a.jpg", "/data/train") == "Fruit"
    assert category_of("/data/train/a.jpg", "/data/train/") == ""
    assert category_of("s3://bucket/shoes/boots/b.jpg", "s3://bucket") == "shoes"
    assert short_source("/a/b/Fruit/Apple/x.jpg") == "…/Apple/x.jpg"


def test_keywords_match_tags_by_word_plural_and_alias() -> None:
    vocabulary = ["Footwear", "running shoe", "shoe shop", "Banana", "Granny Smith", "Person"]
    assert matching_tags("shoe", vocabulary) == ["Footwear", "running shoe", "shoe shop"]
    assert matching_tags("Shoes", vocabulary) == ["Footwear", "running shoe", "shoe shop"]
    assert matching_tags("running shoes", vocabulary) == ["running shoe"]
    assert matching_tags("a banana", vocabulary) == ["Banana"]
    assert matching_tags("apple", vocabulary) == []  # no label says so: no guessing
    assert matching_tags("  ", vocabulary) == []


def test_result_captions_show_the_first_tags() -> None:
    item = ItemMeta(uri="/cat/Fruit/Banana/b1.jpg", sha256="a" * 64, label="Banana",
                    extra={"tags": ["banana", "Person", "lemon", "Fruit", "zucchini"]})
    copy = SearchHit(uri="/cat/b2.jpg", score=0.9, item=item)
    hit = SearchHit(uri=item.uri, score=0.873, item=item, similar=(copy,))
    assert result_caption(hit) == (
        "Banana · 87 % · +1 similar\n…/Banana/b1.jpg\ntags: Person, lemon, Fruit")
    assert result_caption(hit, no_preview="outside the folders") == (
        "Banana · 87 % · +1 similar\n/cat/Fruit/Banana/b1.jpg\ntags: Person, lemon, Fruit\n"
        "no preview: outside the folders")
    bare = SearchHit(uri="/x/a.jpg", score=-0.2, item=ItemMeta(uri="/x/a.jpg", sha256="b" * 64))
    assert result_caption(bare) == "a · 0 %\n…/x/a.jpg"  # no tags line without tags


def test_parse_filters_and_match() -> None:
    filters = parse_filters(["category=Fruit", "tag=banana", "tag=lemon", "source=/cat/Fruit"])
    assert filters == {"category": "Fruit", "tags": ["banana", "lemon"],
                       "source_prefix": "/cat/Fruit"}
    fruit = _item(1, category="Fruit", tags=["lemon", "Person"])
    assert matches(fruit, filters)
    assert not matches(_item(2, category="Fruit", tags=["apple"]), filters)
    assert not matches(_item(3, category="Dairy", tags=["lemon"]), filters)
    assert matches(_item(4, category="X"), {"label": "L0"})
    for bad in (["colour=red"], ["category"], ["tag="], ["source=/a", "source=/b"]):
        with pytest.raises(SearchError):
            parse_filters(bad)
    # a repeated category or label means any of them, like tag= (the last one used to win)
    either = parse_filters(["category=Fruit", "category=Dairy", "category=Fruit", "label=L1"])
    assert either == {"category": ["Fruit", "Dairy"], "label": "L1"}
    assert matches(_item(5, category="Dairy"), {"category": either["category"]})
    assert not matches(_item(6, category="Bakery"), {"category": either["category"]})


def test_collapse_folds_near_duplicates_into_the_higher_hit() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16)).astype(np.float32)
    copy = base[0] + 0.05 * rng.normal(size=16).astype(np.float32)
    vectors = np.vstack([base, copy])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [_item(n) for n in range(4)]
    hits = [SearchHit(uri=i.uri, score=s, item=i) for i, s in zip(items, (0.9, 0.8, 0.7, 0.6),
                                                                      strict=True)]
    lookup = {i.sha256: v for i, v in zip(items, vectors, strict=True)}.get
    folded = collapse_near_duplicates(hits, lookup, 0.9)
    assert [h.uri for h in folded] == [items[0].uri, items[1].uri, items[2].uri]
    assert [s.uri for s in folded[0].similar] == [items[3].uri]
    assert collapse_near_duplicates(hits, None, 0.9) == hits  # no vectors: unchanged
    assert collapse_near_duplicates(hits, lookup, 0.0) == hits  # disabled
    assert near_duplicate_pairs(vectors, 0.9) == [(0, 3, pytest.approx(
        float(vectors[0] @ vectors[3])))]


def test_click_picks_the_smallest_box_under_it() -> None:
    shelf = Detection("Shelf", 90, Box(0.0, 0.0, 1.0, 1.0))
    can = Detection("Can", 60, Box(0.4, 0.4, 0.2, 0.2))
    assert object_at((shelf, can), 0.5, 0.5) == 1
    assert object_at((shelf, can), 0.1, 0.1) == 0
    assert object_at((can,), 0.1, 0.1) is None


def test_labels_never_cover_each_other() -> None:
    """Overlapping boxes sharing a corner (the "3 Car" under "4 Car" case) and a crowded
    shelf: every label gets its own place, so no number is hidden."""
    boxes = [(10, 10, 100, 80), (12, 12, 98, 78), (14, 14, 60, 60)] + [
        (x, y, x + 40, y + 40) for x in range(0, 300, 30) for y in range(0, 300, 45)
    ]
    sizes = [(50, 14)] * len(boxes)
    placed = place_labels(boxes, sizes, 320, 320)
    for n, a in enumerate(placed):
        assert a[0] >= 0 and a[2] <= 320 and a[1] >= 0 and a[3] <= 320
        for b in placed[n + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_selected_object_is_lit_and_the_rest_dimmed() -> None:
    image = Image.new("RGB", (200, 200), (200, 200, 200))
    detections = (Detection("A", 90, Box(0.1, 0.1, 0.3, 0.3)),
                  Detection("B", 80, Box(0.6, 0.6, 0.3, 0.3)))
    drawn = np.asarray(draw_detections(image, detections, selected=1))
    assert drawn[150, 150].mean() > 190  # inside the selected box: as bright as the photo
    assert drawn[100, 30].mean() < 100  # elsewhere: dimmed
    manual = np.asarray(draw_detections(image, detections, region=Box(0.0, 0.5, 0.5, 0.5)))
    assert manual[150, 100].mean() > 190 and manual[30, 150].mean() < 100


# --------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def shoe_pipeline(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Real detector + EfficientNet over a small catalogue in two departments."""
    zappos = SHARED_DATA / "zappos-tiles"
    grocery = Path(__file__).resolve().parents[1] / "samples" / "catalogue"
    if not zappos.is_dir():
        pytest.skip("shared zappos-tiles missing")
    root = tmp_path_factory.mktemp("shop")
    for kind in ("Shoes", "Boots"):
        (root / "Footwear" / kind).mkdir(parents=True)
        for photo in sorted((zappos / kind).glob("*.jpg"))[:4]:
            shutil.copy(photo, root / "Footwear" / kind / photo.name)
    for kind in ("Banana", "Lemon"):
        (root / "Fruit" / kind).mkdir(parents=True)
        for photo in sorted((grocery / kind).glob("*.jpg"))[:3]:
            shutil.copy(photo, root / "Fruit" / kind / photo.name)
    first_banana = sorted((root / "Fruit" / "Banana").iterdir())[0]
    shutil.copy(first_banana, root / "Fruit" / "copy.jpg")
    settings = Settings(data_dir=root / "data", sample_catalogue=None, folder_roots=(root,))
    pipeline = build_pipeline(settings)
    report = pipeline.index_source(str(root))
    assert report.indexed == 14 and report.duplicates == 1
    # the skipped duplicate is named (whichever of the two was listed second)
    assert Path(report.duplicate_files[0][0]).name in {"copy.jpg", first_banana.name}
    return pipeline


def test_tags_are_stored_at_index_time(shoe_pipeline) -> None:
    items = {Path(i.uri).name: i for i in shoe_pipeline.index.items()}
    for name, item in items.items():
        assert item.extra["category"] in {"Footwear", "Fruit"}, name
        assert isinstance(item.extra["tags"], list) and item.extra["tags"], name
    shoes = [i for i in items.values() if i.extra["category"] == "Footwear"]
    # The ImageNet head names footwear in most shoe photos (running shoe, cowboy boot, ...)
    assert sum(bool(matching_tags("shoe", i.extra["tags"]) or matching_tags(
        "boot", i.extra["tags"])) for i in shoes) >= 6, [i.extra["tags"] for i in shoes]
    facets = shoe_pipeline.facets()
    assert facets["category"] == ["Footwear", "Fruit"]


def test_keyword_search_without_a_text_model(shoe_pipeline) -> None:
    hits = shoe_pipeline.search(None, text="shoe", k=5)
    assert hits and all(h.item.extra["category"] == "Footwear" for h in hits)
    with pytest.raises(SearchError, match="SEARCH_EMBEDDER=clip or titan"):
        shoe_pipeline.search(None, text="a yellow submarine", k=5)


def test_filters_more_like_this_and_near_duplicates(shoe_pipeline) -> None:
    items = list(shoe_pipeline.index.items())
    banana = next(i for i in items if "Banana" in i.uri)
    like = shoe_pipeline.search_by_item(banana.sha256, k=20)
    assert banana.sha256 not in {h.item.sha256 for h in like}
    assert like[0].item.label in {"Banana", "Lemon"}
    fruit = shoe_pipeline.search_by_item(banana.sha256, k=20, filters={"category": "Footwear"})
    assert fruit and all(h.item.extra["category"] == "Footwear" for h in fruit)
    prefix = str(Path(banana.uri).parents[1] / "Lemon")
    lemons = shoe_pipeline.search_by_item(banana.sha256, k=20, filters={"source_prefix": prefix})
    assert lemons and all(h.uri.startswith(prefix) for h in lemons)
    with pytest.raises(ItemNotFoundError):
        shoe_pipeline.search_by_item("0" * 64)
    # A re-encoded copy folds into its original as "+1 similar".
    original = Path(banana.uri)
    copy = original.parent / "half.jpg"
    with Image.open(original) as im:
        im.save(copy, quality=60)
    shoe_pipeline.index_source(str(original.parents[2]))
    hits = shoe_pipeline.search_by_item(banana.sha256, k=20)
    uris = [h.uri for h in hits] + [s.uri for h in hits for s in h.similar]
    assert str(copy) in uris
    assert str(copy) not in [h.uri for h in hits[1:]] or any(h.similar for h in hits)
    pairs = shoe_pipeline.near_duplicate_pairs()
    assert any({a, b} == {str(original), str(copy)} for a, b, _ in pairs), pairs
    # the byte-identical copy is one content with two names, not a near-duplicate pair
    assert not any("copy.jpg" in a + b for a, b, _ in pairs), pairs


# --------------------------------------------------------------------------- OpenSearch


def test_opensearch_filters_category_tags_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    clients._session_for.cache_clear()
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(12, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        ItemMeta(uri=f"s3://b/{('shoes', 'fruit')[n % 2]}/{n}.jpg", sha256=f"{n:064x}",
                 label="x", extra={"category": ("shoes", "fruit")[n % 2],
                                   "tags": [("Footwear", "banana")[n % 2], f"t{n % 3}"]})
        for n in range(12)
    ]
    with FakeOpenSearch(strict=True, service="aoss") as fake:
        settings = Settings(index="opensearch", opensearch_endpoint=fake.url,
                            opensearch_auth="sigv4-aoss", aws_region="us-east-1")
        index = OpenSearchIndex(settings, dimension=8)
        index.add(vectors, items)
        hits = index.search(vectors[0], 12, {"category": "fruit"})
        assert len(hits) == 6 and all(h.uri.startswith("s3://b/fruit/") for h in hits)
        hits = index.search(vectors[0], 12, {"tags": ["Footwear", "t1"]})
        assert {h.item.sha256 for h in hits} == {
            i.sha256 for i in items if {"Footwear", "t1"} & set(i.extra["tags"])}
        hits = index.search(vectors[0], 12, {"source_prefix": "s3://b/shoes/", "tags": ["t0"]})
        assert {h.uri for h in hits} == {"s3://b/shoes/0.jpg", "s3://b/shoes/6.jpg"}
        body = [b for b in fake.bodies("_search") if "knn" in b.get("query", {})][-1]
        # efficient k-NN filtering: the filter sits inside the knn clause
        assert body["query"]["knn"]["vector"]["filter"] == {"bool": {"filter": [
            {"prefix": {"uri": "s3://b/shoes/"}}, {"terms": {"tags": ["t0"]}}]}}


def test_opensearch_more_like_this_folding_and_keywords(
    shoe_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalogue's real vectors and tags in OpenSearch (the fake, through opensearch-py):
    more like this, near-duplicate folding and tag keywords work as on the local index."""
    from search_core.pipeline import SearchPipeline

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    clients._session_for.cache_clear()
    matrix, items = shoe_pipeline.index.vectors()
    keep = [n for n, i in enumerate(items) if Path(i.uri).name != "half.jpg"]  # another test's
    matrix, items = matrix[keep], [items[n] for n in keep]
    row = next(n for n, i in enumerate(items) if "/Banana/" in i.uri)
    banana = items[row]
    noisy = matrix[row] + 0.004 * np.random.default_rng(2).normal(size=matrix.shape[1])
    noisy = (noisy / np.linalg.norm(noisy)).astype(np.float32)  # cosine ~0.99: a re-export
    copy = ItemMeta(uri=banana.uri.replace(".jpg", "-small.jpg"), sha256="e" * 64,
                    label=banana.label, extra=dict(banana.extra))
    with FakeOpenSearch(strict=True, service="aoss") as fake:
        settings = Settings(index="opensearch", opensearch_endpoint=fake.url,
                            opensearch_auth="sigv4-aoss", aws_region="us-east-1", adapt="off")
        index = OpenSearchIndex(settings, dimension=matrix.shape[1])
        index.add(np.vstack([matrix, noisy[None]]), [*items, copy])
        pipeline = SearchPipeline(settings, detector=None, embedder=shoe_pipeline.embedder,
                                  index=index)
        assert pipeline.item(banana.sha256).uri == banana.uri
        assert pipeline.item("0" * 64) is None

        like = pipeline.search_by_item(banana.sha256, k=6)
        assert banana.sha256 not in {h.item.sha256 for h in like}
        assert like[0].uri == copy.uri  # the item's own near-duplicate stays, as one result
        assert like[1].item.label in {"Banana", "Lemon"}
        with pytest.raises(ItemNotFoundError):
            pipeline.search_by_item("0" * 64)

        before = len(fake.bodies("_search"))
        hits = pipeline.search_vector(matrix[row], k=5)
        assert hits[0].item.sha256 == banana.sha256
        assert [s.uri for s in hits[0].similar] == [copy.uri]  # "+1 similar"
        assert copy.uri not in {h.uri for h in hits}
        # the result list's vectors came in at most one terms query (the rest were cached)
        lookups = [b for b in fake.bodies("_search")[before:] if "knn" not in b["query"]]
        assert len(lookups) <= 1

        keyword = pipeline.search(None, text="shoe", k=5)
        assert keyword and all(h.item.extra["category"] == "Footwear" for h in keyword)
        scan = [b for b in fake.bodies("_search") if "knn" not in b["query"]][-1]
        assert scan["query"]["bool"]["filter"][0]["terms"]["tags"]  # one filtered scan
        with pytest.raises(SearchError, match="SEARCH_EMBEDDER=clip or titan"):
            pipeline.search(None, text="a yellow submarine", k=5)


def test_local_index_returns_stored_vectors(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path, dimension=4, model_id="m")
    vectors = np.eye(4, dtype=np.float32)
    index.add(vectors, [_item(n) for n in range(4)])
    assert np.array_equal(index.vector_of(_item(2).sha256), vectors[2])
    assert index.vector_of("f" * 64) is None
    assert index.item_of(_item(1).sha256).uri == _item(1).uri


# --------------------------------------------------------------------------- CLI


def test_cli_index_reports_near_duplicates_and_search_filters(tmp_path: Path) -> None:
    """``index`` names near-duplicate pairs; ``search --filter`` narrows (real subprocesses)."""
    import json
    import os
    import subprocess
    import sys

    grocery = Path(__file__).resolve().parents[1] / "samples" / "catalogue"
    root = tmp_path / "shop"
    for kind in ("Banana", "Lemon", "Lime"):
        shutil.copytree(grocery / kind, root / kind)
    photo = sorted((root / "Banana").glob("*_00*.jpg"))[0]
    with Image.open(photo) as im:  # re-encoded at JPEG quality 60: a near-duplicate
        im.save(root / "Banana" / "small.jpg", quality=60)
    env = {**os.environ, "SEARCH_DATA_DIR": str(tmp_path / "data"),
           "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "search_core", *args], env=env,
                              capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parents[1])

    run = cli("index", str(root))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    pair = {str(photo), str(root / "Banana" / "small.jpg")}
    assert summary["near_duplicates"] >= 1
    assert any({p["a"], p["b"]} == pair for p in summary["near_duplicate_pairs"]), summary
    assert "near-duplicate: " in run.stderr and "small.jpg" in run.stderr
    run = cli("search", str(photo), "--k", "5", "--filter", "category=Lime")
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])["results"]
    assert results and all("/Lime/" in r["uri"] for r in results)
    run = cli("search", str(photo), "--filter", "colour=red")
    assert run.returncode == 2 and "unknown filter 'colour'" in run.stderr


def test_tag_modes_choose_what_runs_at_index_time(tmp_path: Path) -> None:
    def tagger(mode: str):
        return build_pipeline(Settings(data_dir=tmp_path / mode, tags=mode,
                                       sample_catalogue=None))._tagger()

    assert tagger("all").detector is not None  # detector labels: the costly part
    keywords = tagger("keywords")
    assert keywords.detector is None and keywords.has_keywords
    assert tagger("off") is None
