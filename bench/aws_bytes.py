"""Bytes sent per image to Bedrock (Titan InvokeModel) and Rekognition (DetectLabels) for the
shared scene photos, measured on the wire: real boto3 clients build, serialise and sign each
request, and a ``before-send`` hook records the HTTP body size and answers locally (nothing
reaches AWS). Also shows what the AWS sample sends (the raw file, base64) for comparison.

    python bench/aws_bytes.py
Ends with one line of JSON.
"""

from __future__ import annotations

import json
import os
import statistics

from _common import SHARED_DATA, emit, require_dir, table
from botocore.awsrequest import AWSResponse

from search_core.aws import clients
from search_core.aws.rekognition import RekognitionDetector
from search_core.aws.titan import TitanEmbedder
from search_core.config import Settings
from search_core.images import load_image


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, amt: int = 1024, decode_content: bool = True):
        yield self.data

    def read(self, amt: int | None = None) -> bytes:
        data, self.data = self.data, b""
        return data


class WireMeter:
    """Records request body sizes and answers with a canned, well-formed response."""

    def __init__(self, answer: dict) -> None:
        self.answer = json.dumps(answer).encode()
        self.sizes: list[int] = []

    def __call__(self, request, **kwargs) -> AWSResponse:
        self.sizes.append(len(request.body or b""))
        return AWSResponse(request.url, 200, {"content-type": "application/x-amz-json-1.1",
                                              "content-length": str(len(self.answer))},
                           _Raw(self.answer))


def main() -> None:
    folder = require_dir(SHARED_DATA / "scenes")
    files = sorted(folder.glob("*.jpg"))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDFAKEFAKEFAKE0001")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fake-secret")
    clients._session_for.cache_clear()
    settings = Settings(aws_region="us-east-1", titan_embedding_length=1024)
    titan = TitanEmbedder(settings)
    rekognition = RekognitionDetector(settings)
    bedrock_meter = WireMeter({"embedding": [1.0] * 1024, "inputTextTokenCount": 0})
    rek_meter = WireMeter({"Labels": []})
    titan.client.meta.events.register("before-send.bedrock-runtime.InvokeModel", bedrock_meter)
    rekognition.client.meta.events.register("before-send.rekognition.DetectLabels", rek_meter)

    rows = []
    per_image = []
    for path in files:
        data = path.read_bytes()
        image = load_image(data)
        titan.embed_query(image=image)
        rekognition.detect(image)
        sample = len(json.dumps({"inputImage": __import__("base64").b64encode(data).decode(),
                                 "embeddingConfig": {"outputEmbeddingLength": 1024}}))
        entry = {"file": path.name, "file_bytes": len(data),
                 "pixels": f"{image.width}x{image.height}",
                 "bedrock_bytes": bedrock_meter.sizes[-1], "rekognition_bytes": rek_meter.sizes[-1],
                 "sample_bedrock_bytes": sample}
        per_image.append(entry)
        rows.append([path.name, entry["pixels"], len(data), entry["bedrock_bytes"],
                     entry["rekognition_bytes"], sample])
    print(table(rows, ["image", "oriented size", "file bytes", "Bedrock body", "Rekognition body",
                       "sample's Bedrock body"]))
    summary = {
        key: {"mean": round(statistics.mean(e[key] for e in per_image)),
              "max": max(e[key] for e in per_image), "total": sum(e[key] for e in per_image)}
        for key in ("file_bytes", "bedrock_bytes", "rekognition_bytes", "sample_bedrock_bytes")
    }
    print("mean bytes/image: " + ", ".join(f"{k} {v['mean']:,}" for k, v in summary.items()))
    emit({"bench": "aws_bytes", "images": len(per_image), "summary": summary,
          "per_image": per_image,
          "note": "HTTP request bodies as serialised by botocore (headers and TLS not counted); "
                  "Bedrock: JSON with base64 JPEG; Rekognition: JSON with base64 Image.Bytes"})


if __name__ == "__main__":
    main()
