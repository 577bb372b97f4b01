"""Security, in process: hostile file names (FIFOs, devices, sparse files, links swapped during a
folder walk), upload-path checks, the failed-login policy, bounded decoding of near-limit image
kinds. The same attacks over real HTTP live in ``test_security_uploads.py``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from search_core.config import Settings, decodes_for_memory
from search_core.errors import SourceError
from search_core.images import load_image
from search_core.indexing import Indexer
from search_core.local_index import LocalIndex
from search_core.ratelimit import LoginLimiter
from search_core.safeio import TooLargeError, read_regular
from search_core.sources import FolderSource, open_source, read_uri
from search_core.tempstore import TempSweeper
from search_core.types import SourceEntry
from search_core.uploads import GONE, NOT_AN_UPLOAD, UploadRefused, check_upload_path, read_upload

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from memory import near_limit_images  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "grocery" / "train" / "Fruit" / "Banana"
OUTSIDE = "outside the allowed folders"


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    """root/ (allowed) with photos in root/sub/, outside/ with a private photo, a FIFO, a sparse
    file and a directory named like an image."""
    if not PHOTOS.is_dir():
        pytest.skip(f"shared test data not found: {PHOTOS}")
    photos = sorted(PHOTOS.glob("*.jpg"))
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for photo in photos[:3]:
        shutil.copy(photo, root / "sub" / photo.name)
    shutil.copy(photos[5], outside / photos[0].name)  # same name as an inside file
    os.mkfifo(outside / "fifo.jpg")
    with (outside / "sparse.jpg").open("wb") as handle:
        handle.truncate(2 * 1024**3)
    (outside / "dir.jpg").mkdir()
    return {"root": root, "outside": outside, "photo": root / "sub" / photos[0].name,
            "private": outside / photos[0].name}


def test_special_files_are_refused_without_blocking_or_reading(layout: dict[str, Path]) -> None:
    outside = layout["outside"]
    for path in (outside / "fifo.jpg", outside / "dir.jpg", Path("/dev/zero")):
        with pytest.raises(SourceError, match="not a regular file"):
            read_regular(path, 50 * 2**20)
    with pytest.raises(TooLargeError, match="too large"):
        read_regular(outside / "sparse.jpg", 50 * 2**20)  # refused from fstat, nothing read
    assert read_regular(layout["photo"], 50 * 2**20) == layout["photo"].read_bytes()
    with pytest.raises(TooLargeError):
        read_regular(layout["photo"], 100)  # the cap holds for real files too


def test_folder_walk_swapped_for_a_link_reads_nothing_from_outside(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    """List, then swap the listed sub-folder for a link to a folder outside the roots (the
    classic race); every read of a listed name must be refused, and an indexer run over the
    listing must index nothing."""
    root, outside = layout["root"], layout["outside"]
    source = FolderSource(root, (root,))
    entries = list(source.list())
    assert len(entries) == 3
    (root / "sub").rename(root / "sub-moved")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    for entry in entries:
        if Path(entry.uri).name == layout["private"].name:
            with pytest.raises(SourceError, match=OUTSIDE):
                source.read(entry)

    class Listed(FolderSource):
        def list(self):  # type: ignore[override]  # the listing from before the swap
            return iter(entries)

    from search_core.models.efficientnet import EfficientNetEmbedder

    embedder = EfficientNetEmbedder(Settings().models_dir)
    index = LocalIndex(tmp_path / "data", dimension=embedder.dimension,
                       model_id=embedder.model_id)
    report = Indexer(embedder, index, batch_size=4).run(Listed(root, (root,)))
    assert index.count() == 0
    reasons = [reason for _uri, reason in report.failures]
    assert any(OUTSIDE in reason for reason in reasons), reasons


def test_previews_read_only_inside_the_roots(layout: dict[str, Path]) -> None:
    settings = Settings(folder_roots=(layout["root"],))
    assert read_uri(str(layout["photo"]), settings) == layout["photo"].read_bytes()
    with pytest.raises(SourceError, match=OUTSIDE):
        read_uri(str(layout["private"]), settings)
    with pytest.raises(SourceError, match=OUTSIDE):
        read_uri(f"{layout['root']}/sub/../../outside/{layout['private'].name}", settings)
    for path in ("/etc/shadow", "/proc/self/environ"):
        with pytest.raises((SourceError, OSError)):
            read_uri(path, settings)
    for name in ("fifo.jpg", "sparse.jpg", "dir.jpg"):
        with pytest.raises(SourceError):
            read_uri(str(layout["outside"] / name), settings)
    with pytest.raises(SourceError):
        read_uri("relative/name.jpg", settings)


@pytest.mark.parametrize("name, reason", [
    ("x" * 300, "too long"),
    ("bad\x00name", "NUL character"),
])
def test_unusable_folder_names_get_a_reason_not_an_os_error(name: str, reason: str,
                                                            tmp_path: Path) -> None:
    settings = Settings(folder_roots=(tmp_path,))
    with pytest.raises(SourceError) as refused:
        open_source(str(tmp_path / name), settings)
    message = str(refused.value)
    assert reason in message and "Errno" not in message


def test_refusals_do_not_show_the_allowed_roots(tmp_path: Path) -> None:
    secret_root = tmp_path / "srv-private-layout"
    secret_root.mkdir()
    with pytest.raises(SourceError) as refused:
        open_source("/etc", Settings(folder_roots=(secret_root,)))
    assert OUTSIDE in str(refused.value) and "srv-private-layout" not in str(refused.value)


def test_upload_paths_must_be_regular_files_inside_the_upload_folder(tmp_path: Path) -> None:
    folder = tmp_path / "gradio"
    (folder / "abc").mkdir(parents=True)
    good = folder / "abc" / "photo.jpg"
    good.write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    (folder / "abc" / "link.jpg").symlink_to(outside)
    os.mkfifo(folder / "abc" / "fifo.jpg")
    assert check_upload_path(str(good), folder) == good
    assert read_upload(str(good), 1000, folder) == good.read_bytes()
    for path in (str(outside), "/etc/shadow", "/dev/zero", str(folder), str(folder / "abc"),
                 f"{folder}/abc/../../secret.jpg", str(folder / "abc" / "link.jpg"),
                 str(folder / "abc" / "fifo.jpg"), "abc/photo.jpg", "http://example.com/x.jpg",
                 "file:///etc/passwd", "data:image/png;base64,AAAA", f"{good}\x00", ""):
        with pytest.raises(UploadRefused) as refused:
            read_upload(path, 1000, folder)
        assert str(refused.value) == NOT_AN_UPLOAD, path
    with pytest.raises(UploadRefused, match="upload it again"):
        read_upload(str(folder / "abc" / "gone.jpg"), 1000, folder)
    assert GONE.endswith("upload it again")
    with pytest.raises(Exception, match="too large"):
        read_upload(str(good), 10, folder)


def test_failed_logins_slow_down_then_lock_then_recover() -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=5, lockout_s=60, slow_after=2, clock=lambda: now[0])
    keys = ("client:1.2.3.4", "user:alice")
    delays = []
    for _ in range(5):
        delays.append(limiter.delay(*keys))
        limiter.failure(*keys)
    assert delays[:2] == [0.0, 0.0] and delays[2] > 0 and delays[4] >= delays[3]
    assert limiter.retry_after(*keys) == 60
    assert limiter.retry_after("client:5.6.7.8", "user:alice") == 60  # per user too
    assert limiter.retry_after("client:1.2.3.4", "user:bob") == 60  # and per client
    assert limiter.retry_after("client:5.6.7.8", "user:bob") == 0
    now[0] = 61
    assert limiter.retry_after(*keys) == 0
    limiter.success(*keys)
    assert limiter.delay(*keys) == 0


def test_decode_budget_follows_the_memory_limit() -> None:
    assert decodes_for_memory(1024) == 1
    assert decodes_for_memory(2048) == 3  # the 2 GB ECS task
    assert decodes_for_memory(2048) <= 4 and decodes_for_memory(64_000) == 4


def test_temp_sweeper_keeps_the_cap_and_protected_files(tmp_path: Path) -> None:
    keep = tmp_path / "example.jpg"
    keep.write_bytes(b"k" * 5000)
    for number in range(20):
        sub = tmp_path / f"d{number}"
        sub.mkdir()
        (sub / "upload.jpg").write_bytes(bytes([number]) * 10_000)
        os.utime(sub / "upload.jpg", (1000 + number, 1000 + number))
    sweeper = TempSweeper(tmp_path, 50_000, protect=lambda: [str(keep)])
    _files, size = sweeper.sweep(wait=True)
    assert size <= 50_000 and keep.exists()
    assert (tmp_path / "d19" / "upload.jpg").exists()  # the most recently used stay
    assert not (tmp_path / "d0" / "upload.jpg").exists()


def test_near_limit_kinds_decode_reduced_and_right(tmp_path: Path) -> None:
    for name, data in near_limit_images(4200).items():
        image = load_image(data)
        assert image.mode == "RGB" and max(image.size) == 2048, name
        pixels = np.asarray(image)
        assert pixels.min() < 40 and pixels.max() > 200, name  # full range, not clipped
    palette = load_image(near_limit_images(600)["palette-alpha.png"])
    assert (255, 255, 255) in {c for _, c in palette.getcolors(1 << 16) or []}


def test_source_entry_reads_respect_the_upload_cap(layout: dict[str, Path]) -> None:
    source = FolderSource(layout["root"], (layout["root"],), max_bytes=100)
    entry = SourceEntry(uri=str(layout["photo"]))
    with pytest.raises(SourceError, match="too large"):
        source.read(entry)


def test_previews_show_only_what_the_index_holds_under_the_roots(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    """``SearchPipeline.preview`` takes URIs that may come from a client (thumbnail URLs): a
    file the index does not hold is never read, even inside the roots; a held file outside the
    roots (indexed with the CLI, which has no allow-list) is refused with a reason the UI shows;
    a held name whose folder was swapped for a link to the outside is refused too."""
    from search_core.models.efficientnet import EfficientNetEmbedder
    from search_core.pipeline import SearchPipeline
    from search_core.sources import PREVIEW_NOT_INDEXED, PREVIEW_OUTSIDE_ROOTS

    root, outside = layout["root"], layout["outside"]
    cli_folder = outside / "cli"
    cli_folder.mkdir()
    shutil.copy(layout["private"], cli_folder / "pictures.jpg")
    shutil.copy(layout["photo"], root / "not-indexed.jpg")
    settings = Settings(folder_roots=(root,), data_dir=tmp_path / "data")
    embedder = EfficientNetEmbedder(settings.models_dir)
    index = LocalIndex(settings.data_dir, dimension=embedder.dimension,
                       model_id=embedder.model_id)
    indexer = Indexer(embedder, index, batch_size=4)
    indexer.run(FolderSource(root / "sub", (root,)))
    indexer.run(FolderSource(cli_folder))  # the owner's CLI: no allow-list
    pipeline = SearchPipeline(settings, detector=None, embedder=embedder, index=index)

    inside, cli_item = str(layout["photo"]), str(cli_folder / "pictures.jpg")
    assert index.holds(inside) and index.holds(cli_item)
    assert pipeline.preview(inside) is not None and pipeline.preview_refusal(inside) is None
    for uri in (str(root / "not-indexed.jpg"), "/etc/passwd", "/proc/self/environ",
                f"{root}/sub/../../outside/{layout['private'].name}", "", "bad\x00uri",
                "s3://some-bucket/never-indexed.jpg"):
        assert not index.holds(uri)
        assert pipeline.preview(uri) is None, uri
        assert pipeline.preview_refusal(uri) == PREVIEW_NOT_INDEXED, uri
    assert pipeline.preview(cli_item) is None
    assert pipeline.preview_refusal(cli_item) == PREVIEW_OUTSIDE_ROOTS
    assert str(outside) not in PREVIEW_OUTSIDE_ROOTS and str(root) not in PREVIEW_OUTSIDE_ROOTS

    # the held name stays, its folder becomes a link to the outside (same file names there)
    (root / "sub").rename(root / "sub-moved")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    assert index.holds(inside) and pipeline.preview(inside) is None
    assert pipeline.preview_refusal(inside) == PREVIEW_OUTSIDE_ROOTS


def test_opensearch_index_holds_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``holds`` on OpenSearch: a term query on ``uri`` (a fresh process has no memory of what
    it wrote), exact names only."""
    from fake_opensearch import FakeOpenSearch

    from search_core.aws.opensearch_index import OpenSearchIndex
    from search_core.types import ItemMeta

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    items = [ItemMeta(uri=f"s3://bucket/photos/{i}.jpg", sha256=f"{i:064x}", label="x",
                      width=10, height=10, size_bytes=100, model="m", dimension=4)
             for i in range(3)]
    vectors = np.eye(4, dtype=np.float32)[:3]
    with FakeOpenSearch(strict=False, service=None) as fake:
        settings = Settings(index="opensearch", opensearch_endpoint=fake.url,
                            opensearch_auth="none", opensearch_index="holds-test")
        OpenSearchIndex(settings, dimension=4).add(vectors, items)
        fresh = OpenSearchIndex(settings, dimension=4)
        assert fresh.holds("s3://bucket/photos/1.jpg")
        for uri in ("s3://bucket/photos/9.jpg", "s3://bucket/photos/", "s3://bucket/photos/1",
                    "/etc/passwd", ""):
            assert not fresh.holds(uri), uri


@pytest.mark.parametrize("trusted, peer, header, client", [
    ("*", "10.0.3.7", "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # what the balancer appended
    ("*", "10.0.3.7", "203.0.113.7:5123", "203.0.113.7"),
    ("10.0.0.0/8", "10.0.3.7", "6.6.6.6, 203.0.113.7, 10.1.1.1", "203.0.113.7"),
    ("10.0.0.0/8", "198.51.100.9", "6.6.6.6", "198.51.100.9"),  # an untrusted peer's header
    ("127.0.0.1,::1", "::1", "[2001:db8::5]:443", "2001:db8::5"),
    ("127.0.0.1", "127.0.0.1", "", "127.0.0.1"),
])
def test_the_client_behind_a_proxy_is_read_from_the_right(trusted: str, peer: str,
                                                           header: str, client: str) -> None:
    from search_core.forwarded import TrustedProxies, client_from

    assert client_from(peer, header, TrustedProxies(trusted)) == client
