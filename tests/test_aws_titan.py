"""TitanEmbedder against botocore: Stubber for exact request checks (parameters validated by the
Bedrock Runtime service model; the JSON ``body`` is checked here, since Stubber does not look
inside it) and, for concurrency/retries, a real boto3 client whose HTTP layer is replaced by a
``before-send`` hook (real serialisation, signing, adaptive retries and error parsing).

Not covered (needs the real service): the embeddings' quality, Titan's exact token limit and
error texts, real throttling rates and quotas, model-access state of an account.
"""

from __future__ import annotations

import base64
import io
import json
import threading

import boto3
import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from botocore.stub import Stubber
from helpers import SCENES, SHARED_DATA, Capture
from PIL import Image

from search_core.aws import clients
from search_core.aws.titan import TitanEmbedder
from search_core.config import Settings
from search_core.errors import BackendError, SearchError
from search_core.images import load_image

MODEL = "amazon.titan-embed-image-v1"


pytestmark = pytest.mark.usefixtures("fake_aws")


def _settings(length: int = 1024, concurrency: int = 4) -> Settings:
    return Settings(aws_region="us-east-1", titan_embedding_length=length,
                    titan_max_concurrency=concurrency)


def _response(vector: list[float]) -> dict:
    data = json.dumps({"embedding": vector, "inputTextTokenCount": 0, "message": None}).encode()
    return {"body": StreamingBody(io.BytesIO(data), len(data)), "contentType": "application/json"}


def _scenes(n: int) -> list[Image.Image]:
    paths = sorted((SCENES).glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"shared data missing: {SHARED_DATA / 'scenes'}")
    return [load_image(p.read_bytes()) for p in paths]


def _stubbed(settings: Settings) -> tuple[TitanEmbedder, Stubber]:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    return TitanEmbedder(settings, client=client), Stubber(client)


def test_image_request_body_and_normalisation() -> None:
    image = _scenes(1)[0]
    embedder, stubber = _stubbed(_settings(length=384))
    body = Capture()
    stubber.add_response(
        "invoke_model", _response([3.0] + [0.0] * 382 + [4.0]),
        {"modelId": MODEL, "body": body, "contentType": "application/json",
         "accept": "application/json"},
    )
    with stubber:
        vector = embedder.embed_query(image=image)
    sent = json.loads(body.value)
    assert set(sent) == {"inputImage", "embeddingConfig"}
    assert sent["embeddingConfig"] == {"outputEmbeddingLength": 384}
    decoded = Image.open(io.BytesIO(base64.b64decode(sent["inputImage"], validate=True)))
    assert decoded.format == "JPEG" and decoded.size == image.size
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert vector[0] == pytest.approx(0.6) and vector[-1] == pytest.approx(0.8)


def test_text_and_image_plus_text_queries() -> None:
    image = _scenes(1)[0]
    embedder, stubber = _stubbed(_settings(length=256))
    assert embedder.supports_text
    first, second = Capture(), Capture()
    params = {"modelId": MODEL, "contentType": "application/json", "accept": "application/json"}
    stubber.add_response("invoke_model", _response([1.0] * 256), {**params, "body": first})
    stubber.add_response("invoke_model", _response([1.0] * 256), {**params, "body": second})
    with stubber:
        embedder.embed_query(text="  a red   shoe ")
        embedder.embed_query(image=image, text="this, but in red")
    text_only, both = json.loads(first.value), json.loads(second.value)
    assert text_only == {"inputText": "a red shoe",
                         "embeddingConfig": {"outputEmbeddingLength": 256}}
    assert both["inputText"] == "this, but in red" and both["inputImage"]
    with pytest.raises(SearchError):
        embedder.embed_query()
    with pytest.raises(SearchError):
        embedder.embed_query(text="   ")


def test_large_image_is_limited_to_2048_and_5mb() -> None:
    image = _scenes(1)[0].resize((5000, 3000))
    embedder = TitanEmbedder(_settings(), client=object())
    data = base64.b64decode(embedder.image_payload(image))
    assert len(data) <= 5 * 1024 * 1024
    assert max(Image.open(io.BytesIO(data)).size) <= 2048


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDeniedException",
         "model access not enabled for amazon.titan-embed-image-v1 in us-east-1: enable it in "
         "the Bedrock console"),
        ("ValidationException", "rejected the request as invalid: nope"),
        ("ThrottlingException", "throttled in us-east-1 even after"),
        ("ExpiredTokenException", "credentials have expired"),
        ("ResourceNotFoundException", "not found"),
    ],
)
def test_errors_have_clear_messages(code: str, expected: str) -> None:
    embedder, stubber = _stubbed(_settings())
    stubber.add_client_error("invoke_model", service_error_code=code, service_message="nope",
                             http_status_code=400)
    with stubber, pytest.raises(BackendError) as info:
        embedder.embed_query(text="shoe")
    assert expected in str(info.value)


def test_wrong_length_answer_is_refused() -> None:
    embedder, stubber = _stubbed(_settings(length=1024))
    stubber.add_response("invoke_model", _response([1.0] * 256))
    with stubber, pytest.raises(BackendError, match="expected 1024"):
        embedder.embed_query(text="shoe")


# -- concurrency, retries and partial failures through real botocore plumbing ----------------


class _Raw(io.BytesIO):
    def stream(self, amt: int = 1024, decode_content: bool = True):  # urllib3-like
        while chunk := self.read(amt):
            yield chunk


class FakeBedrockHTTP:
    """Answers InvokeModel at the HTTP layer. The vector encodes the image's mean colour so the
    test can check order; images whose red channel is 255 get a ValidationException; the first
    ``throttle`` calls of each image answer ThrottlingException (HTTP 400)."""

    def __init__(self, dim: int, throttle: int = 0) -> None:
        self.dim = dim
        self.throttle = throttle
        self.calls: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def __call__(self, request, **kwargs) -> AWSResponse:
        body = json.loads(request.body)
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["inputImage"]))))
        mean = pixels.reshape(-1, 3).mean(axis=0)
        key = body["inputImage"]
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            attempt = self.calls[key]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            threading.Event().wait(0.02)  # let calls overlap
            if attempt <= self.throttle:
                return self._error(400, "ThrottlingException", "Too many requests")
            if mean[0] > 250:
                return self._error(400, "ValidationException", "Invalid image")
            vector = [float(mean[0] + 1), float(mean[1] + 1)] + [0.0] * (self.dim - 2)
            return self._ok({"embedding": vector, "inputTextTokenCount": 0})
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def _ok(payload: dict) -> AWSResponse:
        data = json.dumps(payload).encode()
        return AWSResponse("https://bedrock", 200,
                           {"content-type": "application/json", "content-length": str(len(data))},
                           _Raw(data))

    @staticmethod
    def _error(status: int, code: str, message: str) -> AWSResponse:
        data = json.dumps({"message": message}).encode()
        return AWSResponse("https://bedrock", status,
                           {"content-type": "application/json", "x-amzn-ErrorType": code,
                            "content-length": str(len(data))}, _Raw(data))


def _wired(settings: Settings, fake: FakeBedrockHTTP) -> TitanEmbedder:
    embedder = TitanEmbedder(settings)
    embedder.client.meta.events.register("before-send.bedrock-runtime.InvokeModel", fake)
    return embedder


def _coloured(n: int, bad: set[int] = frozenset()) -> list[Image.Image]:
    return [Image.new("RGB", (120, 90), (255 if i in bad else 10 + 5 * i, 100, 50))
            for i in range(n)]


def test_embed_images_concurrent_preserves_order() -> None:
    fake = FakeBedrockHTTP(dim=256)
    embedder = _wired(_settings(length=256, concurrency=4), fake)
    images = _coloured(12)
    vectors = embedder.embed_images(images)
    assert vectors.shape == (12, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    ratios = vectors[:, 0] / vectors[:, 1]  # (red + 1) / (green + 1) grows with i
    assert np.all(np.diff(ratios) > 0)
    assert 1 < fake.max_in_flight <= 4


def test_bedrock_client_retries_in_standard_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    config = TitanEmbedder(_settings(concurrency=12)).client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 8}
    assert config.max_pool_connections >= 14
    assert config.connect_timeout and config.read_timeout


def test_throttling_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # standard mode: same retry decision as adaptive, without its client-side rate limiter,
    # which would only make this test slow.
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    fake = FakeBedrockHTTP(dim=256, throttle=2)
    embedder = _wired(_settings(length=256, concurrency=3), fake)
    vectors = embedder.embed_images(_coloured(5))
    assert vectors.shape == (5, 256)
    assert sorted(fake.calls.values()) == [3] * 5  # two throttled answers each, then success


def test_one_failure_does_not_lose_the_others() -> None:
    fake = FakeBedrockHTTP(dim=256)
    embedder = _wired(_settings(length=256, concurrency=4), fake)
    images = _coloured(8, bad={3})
    results = embedder.embed_images_partial(images)
    assert len(results) == 8
    assert isinstance(results[3], BackendError) and "invalid" in str(results[3])
    assert all(isinstance(r, np.ndarray) for i, r in enumerate(results) if i != 3)
    with pytest.raises(BackendError, match="1 of 8 images could not be embedded"):
        embedder.embed_images(images)
    assert embedder.embed_images([]).shape == (0, 256)


def test_retry_modes_by_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulk Bedrock calls back off without adaptive's rate limiter (our bounded concurrency
    paces them); everything else uses adaptive mode; AWS_RETRY_MODE overrides both."""

    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    settings = Settings.from_env()
    assert clients.retry_mode(settings, "bedrock-runtime") == "standard"
    assert clients.retry_mode(settings, "rekognition") == "adaptive"
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert clients.retry_mode(Settings.from_env(), "bedrock-runtime") == "adaptive"
