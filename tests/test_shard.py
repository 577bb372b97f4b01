"""``index SOURCE --shard I/N``: N workers listing the same folder split it deterministically,
with no file taken twice and none left out."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search_core.errors import SearchError
from search_core.indexing import Indexer, in_shard, parse_shard
from search_core.local_index import LocalIndex
from search_core.sources import FolderSource


class ContentHashEmbedder:
    """Deterministic vectors from pixels: the shard logic is under test here, not the model."""

    model_id = "content-hash"
    dimension = 8
    supports_text = False

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            seed = int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:4], "big")
            row = np.random.default_rng(seed).normal(size=self.dimension)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32)

    def embed_query(self, image=None, text=None):
        return self.embed_images([image])[0]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16])
def test_shards_cover_a_real_folder_exactly_once(grocery: Path, count: int) -> None:
    uris = [entry.uri for entry in FolderSource(grocery / "train").list()]
    assert len(uris) > 2000
    shards = [{u for u in uris if in_shard(u, (i, count))} for i in range(count)]
    assert sum(len(s) for s in shards) == len(uris)  # no overlap ...
    assert set().union(*shards) == set(uris)  # ... and no gap
    for a, b in itertools.combinations(shards, 2):
        assert not a & b
    if count > 1:  # and a roughly even split (hash of the URI, not the listing order)
        assert min(len(s) for s in shards) > 0.6 * len(uris) / count


def test_the_split_does_not_depend_on_listing_order_or_process() -> None:
    uris = [f"s3://bucket/catalogue/{i:06d}.jpg" for i in range(1000)]
    first = [u for u in uris if in_shard(u, (1, 4))]
    second = [u for u in reversed(uris) if in_shard(u, (1, 4))]
    assert sorted(first) == sorted(second)
    # a stable hash (sha1 of the URI), not Python's per-process salted hash()
    digest = hashlib.sha1(b"s3://bucket/catalogue/000000.jpg").digest()
    expected = int.from_bytes(digest[:8], "big") % 4
    assert in_shard("s3://bucket/catalogue/000000.jpg", (expected, 4))


def test_parse_shard_accepts_i_of_n_and_refuses_the_rest() -> None:
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)
    assert parse_shard(None) is None
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(SearchError):
            parse_shard(bad)


def test_sharded_runs_index_every_image_exactly_once(grocery: Path, tmp_path: Path) -> None:
    """Three workers, one shared index: together they index the folder, each image once."""
    folder = next(grocery.glob("train/**/Banana"))
    source = FolderSource(folder)
    index = LocalIndex(tmp_path, dimension=8, model_id="content-hash")
    embedder = ContentHashEmbedder()
    reports = [
        Indexer(embedder, index, batch_size=8).run(source, shard=(i, 3)) for i in range(3)
    ]
    listed = [e.uri for e in source.list()]
    assert sum(r.total for r in reports) == len(listed)
    assert sorted(item.uri for item in index.items()) == sorted(listed)
    assert all(r.failed == 0 for r in reports)
    # a rerun of one shard touches only its own share and finds nothing new
    again = Indexer(embedder, index, batch_size=8).run(source, shard=(1, 3))
    assert again.indexed == 0 and again.unchanged == reports[1].total
