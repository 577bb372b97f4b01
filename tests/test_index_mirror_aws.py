"""The index mirrors an S3 prefix in OpenSearch too (issue 10): renames (copy + delete), copies,
overwrites and deletions in a sub-prefix, each followed by one ``--prune`` run, leave the
OpenSearch index holding exactly the current objects under their current keys.

Real photos and the real EfficientNet embedder; S3 is moto's, OpenSearch the strict
Serverless fake (no document ids, SigV4 verified).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.credentials import Credentials
from fake_opensearch import FAKE_KEY, FAKE_SECRET, FakeOpenSearch
from moto import mock_aws
from opensearchpy import OpenSearch, RequestsAWSV4SignerAuth, RequestsHttpConnection

from search_core.aws import clients
from search_core.aws.opensearch_index import OpenSearchIndex
from search_core.aws.s3_source import S3Source
from search_core.config import Settings
from search_core.indexing import Indexer
from search_core.models.efficientnet import EfficientNetEmbedder

APPLES = Path(__file__).resolve().parents[1].parent / "shared/data/grocery/train/Fruit/Apple"
BUCKET = "catalogue"
PREFIX = f"s3://{BUCKET}/photos/"


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    clients._session_for.cache_clear()


@pytest.fixture
def world() -> Iterator[tuple]:
    with mock_aws(), FakeOpenSearch(strict=True, service="aoss") as fake:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        client = OpenSearch(
            hosts=[fake.url], connection_class=RequestsHttpConnection,
            # moto swaps the environment credentials for its own: sign with the fake's.
            http_auth=RequestsAWSV4SignerAuth(Credentials(FAKE_KEY, FAKE_SECRET), "us-east-1",
                                              "aoss"),
        )
        yield s3, client, fake


def test_s3_prefix_mirrored_in_opensearch(world: tuple) -> None:
    if not APPLES.is_dir():
        pytest.skip(f"shared test data not found: {APPLES}")
    s3, client, fake = world
    photos = sorted(APPLES.rglob("*.jpg"))[:9]
    for photo in photos[:5]:
        s3.put_object(Bucket=BUCKET, Key=f"photos/{photo.name}", Body=photo.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="photos/sub/in-sub.jpg", Body=photos[5].read_bytes())
    settings = Settings(index="opensearch", opensearch_endpoint=fake.url,
                        opensearch_auth="sigv4-aoss", opensearch_index="mirror",
                        aws_region="us-east-1")
    embedder = EfficientNetEmbedder(Settings().models_dir)
    index = OpenSearchIndex(settings, dimension=embedder.dimension, model_id=embedder.model_id,
                            client=client)

    def run(prefix: str = PREFIX) -> dict:
        source = S3Source(prefix, settings, client=s3)
        report = Indexer(embedder, index, batch_size=4, workers=2).run(source, prune=True)
        assert not report.error, report.error
        return report.to_dict()

    def assert_mirrors() -> None:
        listed = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
                listed[f"s3://{BUCKET}/{obj['Key']}"] = hashlib.sha256(body).hexdigest()
        docs = fake.all_docs("mirror")
        assert {d["uri"]: d["sha256"] for d in docs} == listed
        assert len(docs) == len(listed)  # one document per name, none left behind
        by_content: dict[str, list] = {}
        for doc in docs:
            by_content.setdefault(doc["sha256"], []).append(np.asarray(doc["vector"]))
        for vectors in by_content.values():  # a copy carries its content's vector
            assert all(np.allclose(v, vectors[0]) for v in vectors)

    assert run()["indexed"] == 6
    assert_mirrors()

    s3.copy_object(Bucket=BUCKET, Key="photos/renamed.jpg",  # rename = copy + delete
                   CopySource={"Bucket": BUCKET, "Key": f"photos/{photos[0].name}"})
    s3.delete_object(Bucket=BUCKET, Key=f"photos/{photos[0].name}")
    s3.copy_object(Bucket=BUCKET, Key="photos/copy.jpg",
                   CopySource={"Bucket": BUCKET, "Key": f"photos/{photos[1].name}"})
    report = run()
    assert report["indexed"] == 0 and report["duplicates"] == 2 and report["pruned"] == 1
    assert_mirrors()

    s3.put_object(Bucket=BUCKET, Key=f"photos/{photos[2].name}",  # overwritten: new ETag
                  Body=photos[6].read_bytes())
    report = run()
    assert report["indexed"] == 1 and report["replaced"] == 1
    assert_mirrors()

    assert run(PREFIX + "sub/")["unchanged"] == 1  # the sub-prefix indexed on its own
    s3.delete_object(Bucket=BUCKET, Key="photos/sub/in-sub.jpg")
    assert run()["pruned"] == 1  # pruning the parent covers it
    assert_mirrors()
