"""Ingest throughput through the Titan path, ours versus the AWS sample's sequential loop, on
the same local stand-ins (nothing reaches AWS):

- Bedrock Runtime stand-in: a local HTTP server reached through ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``
  (real boto3 serialisation, signing, retries), 150 ms per call, 10 % of calls answered with
  ``ThrottlingException`` (HTTP 400), a deterministic vector per image otherwise.
- OpenSearch Serverless stand-in: ``tests/fake_opensearch.py`` in strict mode (SigV4 ``aoss``,
  no custom ids, no refresh), with a per-request latency (default 20 ms).

"sample" = the AWS sample's loop: per image, one ``invoke_model`` with the raw file (default
boto3 client: legacy retries) and one ``index()`` call. "ours" = ``search_core.indexing.Indexer``
with ``TitanEmbedder`` (bounded concurrency, adaptive retries) and ``OpenSearchIndex`` (bulk,
dedup by sha256). Both then run a second time over the same folder to count duplicates.

    python bench/titan_ingest.py --quick     # 80 images
    python bench/titan_ingest.py             # 300 images
Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from _common import GROCERY, REPO, emit, image_files, require_dir, table

sys.path.insert(0, str(REPO / "tests"))

import boto3
from botocore.credentials import Credentials
from fake_opensearch import FAKE_KEY, FAKE_SECRET, FakeOpenSearch
from opensearchpy import OpenSearch, RequestsAWSV4SignerAuth, RequestsHttpConnection

from search_core.aws import clients
from search_core.aws.opensearch_index import OpenSearchIndex
from search_core.aws.titan import TitanEmbedder
from search_core.config import Settings
from search_core.indexing import Indexer
from search_core.sources import FolderSource

DIM = 1024


class BedrockStandIn:
    """InvokeModel over HTTP with fixed latency and random throttling."""

    def __init__(self, latency: float, throttle: float, seed: int = 0) -> None:
        self.latency = latency
        self.throttle = throttle
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.calls = 0
        self.throttled = 0
        self.bytes_in = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(stand_in.latency)
                with stand_in.lock:
                    stand_in.calls += 1
                    stand_in.bytes_in += len(body)
                    throttled = stand_in.rng.random() < stand_in.throttle
                    stand_in.throttled += throttled
                if throttled:
                    self._reply(400, {"message": "Too many requests, please wait before trying "
                                                 "again."}, "ThrottlingException")
                    return
                request = json.loads(body)
                length = request.get("embeddingConfig", {}).get("outputEmbeddingLength", DIM)
                seed = int.from_bytes(hashlib.sha256(
                    base64.b64decode(request["inputImage"])[:4096]).digest()[:8], "little")
                vector = np.random.default_rng(seed).normal(size=length)
                self._reply(200, {"embedding": vector.round(6).tolist(),
                                  "inputTextTokenCount": 0})

            def do_GET(self) -> None:
                with stand_in.lock:
                    self._reply(200, {"calls": stand_in.calls, "throttled": stand_in.throttled})

            def _reply(self, status: int, payload: dict, error: str = "") -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if error:
                    self.send_header("x-amzn-ErrorType", f"{error}:http://internal.amazon.com/")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _serve(latency: float, throttle: float, port_queue: multiprocessing.Queue) -> None:
    stand_in = BedrockStandIn(latency, throttle)
    port_queue.put(stand_in.url)
    threading.Event().wait()


class RemoteStandIn:
    """The stand-in in its own process, so its CPU work (JSON of 1,024 floats per answer) does
    not compete with the client for this process's GIL, as a remote service would not."""

    def __init__(self, latency: float, throttle: float) -> None:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=_serve, args=(latency, throttle, queue),
                                               daemon=True)
        self.process.start()
        self.url = queue.get(timeout=30)

    def counters(self) -> tuple[int, int]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as response:
            data = json.loads(response.read())
        return data["calls"], data["throttled"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


def sample_loop(files: list[Path], bedrock_url: str, os_client: OpenSearch, index: str) -> int:
    """The AWS sample: for each file, embed the raw bytes, index one document."""
    bedrock = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=bedrock_url)
    failures = 0
    for path in files:
        body = json.dumps({"inputImage": base64.b64encode(path.read_bytes()).decode(),
                           "embeddingConfig": {"outputEmbeddingLength": DIM}})
        try:
            response = bedrock.invoke_model(modelId="amazon.titan-embed-image-v1", body=body,
                                            contentType="application/json",
                                            accept="application/json")
        except Exception:
            failures += 1
            continue
        embedding = json.loads(response["body"].read())["embedding"]
        os_client.index(index=index, body={"vector": embedding, "uri": str(path),
                                           "label": path.parent.name})
    return failures


def count_docs(fake: FakeOpenSearch, index: str) -> tuple[int, int]:
    docs = fake.all_docs(index)
    return len(docs), len({d.get("uri") for d in docs})


def run_ours(args: argparse.Namespace, fake: FakeOpenSearch, bedrock: RemoteStandIn,
             corpus: Path, work: Path, distinct: int, total: int, name: str) -> dict:
    clients._session_for.cache_clear()
    settings = Settings(
        aws_region="us-east-1", embedder="titan", index="opensearch",
        titan_max_concurrency=args.concurrency, titan_embedding_length=DIM,
        opensearch_endpoint=fake.url, opensearch_auth="sigv4-aoss",
        opensearch_index=name, batch_size=args.batch_size,
        aws_retry_mode=Settings.read("aws_retry_mode"),  # main() sets it per run
    )
    embedder = TitanEmbedder(settings)
    vindex = OpenSearchIndex(settings, dimension=DIM, model_id=embedder.model_id)
    indexer = Indexer(embedder, vindex, batch_size=args.batch_size, workers=2)
    source = FolderSource(corpus, roots=(work,))
    calls0, throttled0 = bedrock.counters()
    start = time.perf_counter()
    report = indexer.run(source)
    seconds = time.perf_counter() - start
    calls1, throttled1 = bedrock.counters()
    docs, _ = count_docs(fake, name)
    shas = {d["sha256"] for d in fake.all_docs(name)}
    rerun = indexer.run(source)
    docs2, _ = count_docs(fake, name)
    return {"seconds": round(seconds, 2), "images_per_s": round(total / seconds, 2),
            "lost": distinct - len(shas), "failed": len(report.failures),
            "failures": report.failures[:3],
            "skipped_duplicate_content": report.duplicates,
            "duplicated_first_run": docs - len(shas),
            "duplicated_after_rerun": docs2 - len(shas),
            "rerun_indexed": rerun.indexed, "rerun_seconds": round(rerun.seconds, 2),
            "bedrock_calls": calls1 - calls0, "throttled": throttled1 - throttled0,
            "concurrency": args.concurrency, "batch_size": args.batch_size,
            "retry_mode": clients.retry_mode(settings, "bedrock-runtime")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="80 images instead of 300")
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.150)
    parser.add_argument("--throttle", type=float, default=0.10)
    parser.add_argument("--os-latency", type=float, default=0.020)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="Indexer batch (the Titan pool drains one batch at a time)")
    parser.add_argument("--retry-modes", default="adaptive,standard",
                        help="botocore retry modes to run our path with (AWS_RETRY_MODE)")
    args = parser.parse_args()
    n = args.images or (80 if args.quick else 300)
    files = image_files(require_dir(GROCERY / "train"), None)
    step = max(1, len(files) // n)
    files = files[::step][:n]

    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_KEY, AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
                      AWS_REGION="us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    bedrock = RemoteStandIn(args.latency, args.throttle)
    os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.url
    clients._session_for.cache_clear()
    work = Path(tempfile.mkdtemp(prefix="titan-bench-"))
    corpus = work / "corpus"
    for path in files:
        target = corpus / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    copies = sorted(p for p in corpus.rglob("*") if p.is_file())
    distinct = len({hashlib.sha256(p.read_bytes()).hexdigest() for p in copies})

    rows = []
    result: dict[str, object] = {"bench": "titan_ingest", "images": len(copies),
                                 "distinct_images": distinct, "latency_ms": args.latency * 1000,
                                 "throttle_rate": args.throttle,
                                 "opensearch_latency_ms": args.os_latency * 1000}
    try:
        with FakeOpenSearch(strict=True, latency=args.os_latency) as fake:
            # -- the sample's sequential loop -------------------------------------------------
            os_client = OpenSearch(
                hosts=[fake.url], connection_class=RequestsHttpConnection,
                http_auth=RequestsAWSV4SignerAuth(Credentials(FAKE_KEY, FAKE_SECRET),
                                                  "us-east-1", "aoss"))
            os_client.indices.create(index="sample", body={
                "settings": {"index": {"knn": True}},
                "mappings": {"properties": {"vector": {
                    "type": "knn_vector", "dimension": DIM,
                    "method": {"name": "hnsw", "engine": "faiss", "space_type": "l2"}}}}})
            calls0, throttled0 = bedrock.counters()
            start = time.perf_counter()
            failed = sample_loop(copies, bedrock.url, os_client, "sample")
            seconds = time.perf_counter() - start
            docs, uris = count_docs(fake, "sample")
            failed_rerun = sample_loop(copies, bedrock.url, os_client, "sample")
            docs2, _ = count_docs(fake, "sample")
            sample = {"seconds": round(seconds, 2), "images_per_s": round(len(copies) / seconds, 2),
                      "lost": len(copies) - uris, "failed_calls": failed,
                      "duplicated_first_run": docs - uris,
                      "duplicated_after_rerun": docs2 - uris,
                      "failed_calls_rerun": failed_rerun,
                      "bedrock_calls": bedrock.counters()[0] - calls0,
                      "throttled": bedrock.counters()[1] - throttled0}
            rows.append(["sample (sequential)", sample["seconds"], sample["images_per_s"],
                         sample["lost"], sample["duplicated_first_run"],
                         sample["duplicated_after_rerun"], sample["throttled"]])

            # -- ours: Indexer + TitanEmbedder + OpenSearchIndex ------------------------------
            ours = {}
            for mode in args.retry_modes.split(","):
                os.environ["AWS_RETRY_MODE"] = mode
                ours[mode] = run_ours(args, fake, bedrock, corpus, work, distinct, len(copies),
                                      f"ours-{mode}")
                o = ours[mode]
                rows.append([f"ours ({mode} retries, {args.concurrency} concurrent)",
                             o["seconds"], o["images_per_s"], o["lost"],
                             o["duplicated_first_run"], o["duplicated_after_rerun"],
                             o["throttled"]])
    finally:
        bedrock.stop()
        shutil.rmtree(work, ignore_errors=True)

    speedups = {m: round(o["images_per_s"] / sample["images_per_s"], 2) for m, o in ours.items()}
    result.update(sample=sample, ours=ours, speedup=speedups,
                  indexing="search_core.indexing.Indexer into OpenSearchIndex (fake AOSS)")
    print(f"{len(copies)} images ({distinct} distinct), Bedrock stand-in {args.latency * 1000:.0f}"
          f" ms + {args.throttle:.0%} throttling, OpenSearch stand-in {args.os_latency * 1000:.0f}"
          f" ms/request")
    print(table(rows, ["path", "seconds", "images/s", "lost", "dup (1st run)", "dup (re-run)",
                       "throttled calls"]))
    print("speed-up: " + ", ".join(f"{m} {v}x" for m, v in speedups.items()))
    emit(result)


if __name__ == "__main__":
    main()
