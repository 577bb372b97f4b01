"""Amazon Titan Multimodal Embeddings G1 (Bedrock ``InvokeModel``) as an
:class:`~search_core.interfaces.Embedder`.

Why it looks like this:
- Request body (Bedrock user guide, "Amazon Titan Multimodal Embeddings G1"):
  ``{"inputImage": <base64>, "inputText": <str>, "embeddingConfig": {"outputEmbeddingLength":
  256|384|1024}}``; at least one input; both give the average of the text and image vectors,
  which is exactly an image + text query ("this, but in red"). Response: ``{"embedding": [...],
  "inputTextTokenCount": n, "message": ...}``.
- Limits: 2048 x 2048 px and 25 MB per image, 256 text tokens. We send JPEG with the long side
  <= 2048 and <= 5 MB: smaller requests, same vector quality for catalogue photos.
- One InvokeModel per image is latency-bound (~100-200 ms), so batches run on a bounded thread
  pool (``TITAN_MAX_CONCURRENCY``); botocore's adaptive retry mode absorbs throttling.
- A failure of one image must not lose the others: :meth:`TitanEmbedder.embed_images_partial`
  returns a vector or an exception per image, in input order.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from search_core.aws.clients import aws_errors
from search_core.aws.clients import client as make_client
from search_core.config import Settings
from search_core.errors import BackendError, SearchError
from search_core.images import encode_image
from search_core.vectors import l2_normalise

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_SIDE = 2048
#: Titan counts tokens, not characters; 256 tokens is roughly 1,000 characters of English.
MAX_TEXT_CHARS = 1000


class TitanEmbedder:
    """``TitanEmbedder(settings, client=None)``; ``client`` is a ``bedrock-runtime`` client."""

    supports_text = True

    def __init__(self, settings: Settings, *, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client
        self.model_id = settings.titan_model_id
        self.dimension = int(settings.titan_embedding_length)
        self.max_concurrency = max(1, int(settings.titan_max_concurrency))
        #: the indexer waits for the slowest call of a batch (often one being retried after a
        #: throttle); many calls per worker per batch amortise that wait
        self.preferred_batch_size = 16 * self.max_concurrency

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(
                "bedrock-runtime", self._settings, pool=self.max_concurrency + 2
            )
        return self._client

    # -- request building -------------------------------------------------------------------

    def image_payload(self, image: Image.Image) -> str:
        """Base64 JPEG as sent in ``inputImage`` (exposed for the bytes benchmark)."""
        data = encode_image(
            image,
            fmt="JPEG",
            max_bytes=MAX_IMAGE_BYTES,
            max_side=min(MAX_SIDE, self._settings.max_side),
        )
        return base64.b64encode(data).decode("ascii")

    def request_body(
        self, image: Image.Image | None = None, text: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if image is not None:
            body["inputImage"] = self.image_payload(image)
        if text is not None:
            text = " ".join(text.split())
            if not text:
                raise SearchError("the text query is empty")
            if len(text) > MAX_TEXT_CHARS:
                raise SearchError(
                    f"the text query is too long for Titan (at most ~{MAX_TEXT_CHARS} characters)"
                )
            body["inputText"] = text
        if not body:
            raise SearchError("a query needs an image, a text, or both")
        body["embeddingConfig"] = {"outputEmbeddingLength": self.dimension}
        return body

    # -- calls ------------------------------------------------------------------------------

    def _invoke(self, body: dict[str, Any]) -> np.ndarray:
        with aws_errors(
            service="Bedrock",
            action="InvokeModel",
            settings=self._settings,
            resource=self.model_id,
        ):
            response = self.client.invoke_model(
                modelId=self.model_id,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
            raw = response["body"].read()
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"Bedrock {self.model_id} returned a body that is not JSON") from exc
        embedding = payload.get("embedding")
        if not embedding:
            detail = payload.get("message") or "no 'embedding' in the answer"
            raise BackendError(f"Bedrock {self.model_id} returned no embedding: {detail}")
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.shape != (self.dimension,):
            raise BackendError(
                f"Bedrock {self.model_id} returned {vector.size} values, expected {self.dimension}"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise BackendError(f"Bedrock {self.model_id} returned a zero or invalid vector")
        return l2_normalise(vector)

    def _embed_one(self, image: Image.Image) -> np.ndarray:
        return self._invoke(self.request_body(image=image))

    def embed_images_partial(
        self, images: Sequence[Image.Image]
    ) -> list[np.ndarray | SearchError]:
        """One entry per image, in order: its unit vector, or the SearchError that stopped it.
        Every image is attempted; nothing raises for a single image's failure."""

        def run(image: Image.Image) -> np.ndarray | SearchError:
            try:
                return self._embed_one(image)
            except SearchError as exc:
                return exc
            except Exception as exc:
                return BackendError(f"Bedrock {self.model_id}: {type(exc).__name__}: {exc}")

        if not images:
            return []
        if len(images) == 1 or self.max_concurrency == 1:
            return [run(image) for image in images]
        with ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(images)), thread_name_prefix="titan"
        ) as pool:
            return list(pool.map(run, images))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """All vectors, shape (n, dimension). Every image is attempted first; if any failed,
        raises BackendError naming how many and the first reason (use
        :meth:`embed_images_partial` to keep the successes)."""
        results = self.embed_images_partial(images)
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)]
        if failures:
            index, first = failures[0]
            raise BackendError(
                f"{len(failures)} of {len(results)} images could not be embedded "
                f"(first: image {index}: {first})"
            )
        if not results:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(results).astype(np.float32)  # type: ignore[arg-type]

    def embed_query(self, image: Image.Image | None = None, text: str | None = None) -> np.ndarray:
        return self._invoke(self.request_body(image=image, text=text))
