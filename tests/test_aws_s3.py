"""S3Source against moto's S3 (real boto3 requests, moto's implementation of ListObjectsV2
pagination at 1,000 keys, GetObject streaming, errors and presigning).

Not covered (needs real S3): IAM/bucket-policy denials and KMS-encrypted objects, cross-region
redirects, eventual listing behaviour under concurrent writes, and that a presigned URL really
opens in a browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import boto3
import numpy as np
import pytest
from helpers import SCENES
from moto import mock_aws

from search_core.aws.s3_source import S3Source, is_candidate_key, parse_s3_uri
from search_core.config import Settings
from search_core.errors import SourceError
from search_core.types import SourceEntry

BUCKET = "catalogue-images"
SETTINGS = Settings(aws_region="us-east-1")


pytestmark = pytest.mark.usefixtures("fake_aws")


@pytest.fixture
def s3() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_lists_past_1000_keys_and_skips_non_images(s3) -> None:
    for i in range(1030):
        s3.put_object(Bucket=BUCKET, Key=f"shoes/img-{i:05d}.jpg", Body=b"x" * (i % 7 + 1))
    extras = {
        "shoes/readme.txt": b"text",
        "shoes/labels.json": b"{}",
        "shoes/sub/": b"",  # folder marker
        "shoes/.DS_Store": b"junk",
        "shoes/noextension": b"maybe an image",
        "shoes/empty.png": b"",
        "boots/other.jpg": b"outside the prefix",
    }
    for key, body in extras.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    source = S3Source(f"s3://{BUCKET}/shoes/", SETTINGS, client=s3)
    entries = list(source.list())
    uris = [e.uri for e in entries]
    assert len(entries) == 1031  # 1,030 images + the key without extension
    assert uris == sorted(uris)
    assert f"s3://{BUCKET}/shoes/noextension" in uris
    assert not any(u.endswith((".txt", ".json", "/", ".DS_Store", "empty.png")) for u in uris)
    head = s3.head_object(Bucket=BUCKET, Key="shoes/img-01029.jpg")
    last = next(e for e in entries if e.uri.endswith("img-01029.jpg"))
    assert last.version == head["ETag"].strip('"') and last.size_bytes == 1029 % 7 + 1


def test_read_streams_the_exact_bytes(s3) -> None:
    path = SCENES / "darknet_dog.jpg"
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    data = path.read_bytes()
    s3.put_object(Bucket=BUCKET, Key="scenes/dog.jpg", Body=data)
    source = S3Source(f"s3://{BUCKET}/scenes", SETTINGS, client=s3)
    (entry,) = list(source.list())
    assert source.read(entry) == data


def test_default_client_comes_from_settings(s3) -> None:
    rng = np.random.default_rng(1)
    blob = rng.integers(0, 255, size=3 * 1024 * 1024, dtype=np.uint8).tobytes()
    s3.put_object(Bucket=BUCKET, Key="big.bin.jpg", Body=blob)
    source = S3Source(f"s3://{BUCKET}/", SETTINGS)  # builds its own client (adaptive retries)
    (entry,) = list(source.list())
    assert source.read(entry) == blob  # several 1 MB chunks


def test_size_limit_is_enforced(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="huge.jpg", Body=b"0" * 5000)
    source = S3Source(f"s3://{BUCKET}/", Settings(max_upload_bytes=1000), client=s3)
    (entry,) = list(source.list())
    with pytest.raises(SourceError, match="limit"):
        source.read(entry)
    lying = SourceEntry(uri=entry.uri, size_bytes=10)  # listing said small, object is large
    with pytest.raises(SourceError, match="larger than"):
        source.read(lying)


def test_missing_objects_and_buckets_are_source_errors(s3) -> None:
    source = S3Source(f"s3://{BUCKET}/x/", SETTINGS, client=s3)
    with pytest.raises(SourceError, match="no longer exists"):
        source.read(SourceEntry(uri=f"s3://{BUCKET}/x/gone.jpg", size_bytes=3))
    with pytest.raises(SourceError, match="not an object of"):
        source.read(SourceEntry(uri="s3://another-bucket/x/a.jpg"))
    with pytest.raises(SourceError, match="does not exist"):
        list(S3Source("s3://no-such-bucket-here/", SETTINGS, client=s3).list())


@pytest.mark.parametrize(
    "uri",
    ["", "http://bucket/x", "s3://", "s3:///prefix", "s3://UpperCase/x", "s3://ab/x",
     "s3://bad_underscore/x", "s3://bucket/../etc", "s3://192.168.1.1/x", "s3://-bucket/"],
)
def test_invalid_uris_are_refused(uri: str) -> None:
    with pytest.raises(SourceError):
        parse_s3_uri(uri)


def test_uri_parsing_and_key_filter() -> None:
    assert parse_s3_uri("s3://my.bucket-1/a/b/") == ("my.bucket-1", "a/b/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert is_candidate_key("a/B.JPEG") and is_candidate_key("a/photo")
    assert not is_candidate_key("a/notes.md") and not is_candidate_key("a/")


def test_presigned_url(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/a b.jpg", Body=b"123")
    source = S3Source(f"s3://{BUCKET}/p/", SETTINGS)  # default client: SigV4 presigning
    url = source.presigned_url(f"s3://{BUCKET}/p/a b.jpg", expires=600)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.scheme == "https" and BUCKET in parts.netloc + parts.path
    assert parts.path.endswith("/p/a%20b.jpg")
    assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
