"""An S3 prefix as an :class:`~search_core.interfaces.ImageSource`.

Why it looks like this:
- ``ListObjectsV2`` returns at most 1,000 keys per call; the sample stopped there. We use the
  paginator, which follows ``ContinuationToken`` to the end.
- Keys are filtered cheaply by extension (``.txt``, ``.json``, folder markers, ... are skipped;
  keys without an extension are kept), but the extension is not trusted: the indexer decodes the
  content and records a failure for anything that is not an image.
- ``SourceEntry.version`` is the ETag, so a re-run skips unchanged objects without reading them.
- Objects are streamed in chunks with a size cap, so a mislabelled 5 GB object cannot fill memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from search_core.aws.clients import client as make_client
from search_core.aws.clients import error_code, translate_error
from search_core.config import Settings
from search_core.errors import SourceError
from search_core.types import SourceEntry

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif",
     ".avif", ".jfif"}
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CHUNK = 1024 * 1024
PRESIGN_SECONDS = 3600


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix); raises SourceError with the reason."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise SourceError(f"not an S3 URI (expected s3://bucket/prefix): {uri!r}")
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise SourceError(f"S3 URI without a bucket name: {uri!r}")
    if not _BUCKET_RE.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
        raise SourceError(
            f"invalid S3 bucket name {bucket!r}: 3-63 lowercase letters, digits, dots or hyphens"
        )
    if any(part == ".." for part in prefix.split("/")) or "\x00" in prefix:
        raise SourceError(f"invalid S3 prefix {prefix!r}")
    return bucket, prefix


def is_candidate_key(key: str) -> bool:
    """False for folder markers and keys whose extension says they are not images."""
    if not key or key.endswith("/"):
        return False
    name = PurePosixPath(key).name
    if name.startswith("."):  # .DS_Store, ._foo.jpg (macOS resource forks)
        return False
    suffix = PurePosixPath(name).suffix.lower()
    return suffix == "" or suffix in IMAGE_EXTENSIONS


class S3Source:
    """``S3Source(uri, settings, client=None)``: every image under ``s3://bucket/prefix``."""

    def __init__(self, uri: str, settings: Settings, *, client: Any | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self._settings = settings
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("s3", self._settings)
        return self._client

    def _fail(self, exc: Exception, action: str, key: str = "") -> SourceError:
        where = f"s3://{self.bucket}/{key}" if key else self.uri
        code = error_code(exc)
        if code in {"NoSuchBucket"}:
            return SourceError(
                f"S3 bucket {self.bucket!r} does not exist (or is in another account)"
            )
        if code in {"NoSuchKey", "404", "NotFound"}:
            return SourceError(f"{where} no longer exists")
        backend = translate_error(exc, service="S3", action=action, settings=self._settings,
                                  resource=where)
        return SourceError(str(backend))

    def list(self) -> Iterator[SourceEntry]:
        """Every candidate object, in S3's (lexicographic, hence stable) key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []) or []:
                    key = obj["Key"]
                    size = int(obj.get("Size", 0))
                    if size <= 0 or not is_candidate_key(key):
                        continue
                    yield SourceEntry(
                        uri=f"s3://{self.bucket}/{key}",
                        size_bytes=size,
                        version=str(obj.get("ETag", "")).strip('"'),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "ListObjectsV2") from exc

    def _key_of(self, uri: str) -> str:
        bucket, key = parse_s3_uri(uri)
        if bucket != self.bucket or not key:
            raise SourceError(f"{uri} is not an object of {self.uri}")
        return key

    def read(self, entry: SourceEntry) -> bytes:
        key = self._key_of(entry.uri)
        limit = self._settings.max_upload_bytes
        if entry.size_bytes > limit:
            raise SourceError(
                f"{entry.uri} is {entry.size_bytes / 1e6:.1f} MB, above the "
                f"{limit / 1e6:.0f} MB limit (SEARCH_MAX_UPLOAD_MB)"
            )
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            chunks: list[bytes] = []
            total = 0
            try:
                for chunk in body.iter_chunks(_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise SourceError(
                            f"{entry.uri} is larger than the {limit / 1e6:.0f} MB limit"
                        )
                    chunks.append(chunk)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "GetObject", key) from exc
        return b"".join(chunks)

    def presigned_url(self, uri: str, expires: int = PRESIGN_SECONDS) -> str:
        """A time-limited HTTPS URL for showing ``uri`` in a browser (no credentials needed)."""
        key = self._key_of(uri)
        try:
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires)
            ))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "presign", key) from exc

