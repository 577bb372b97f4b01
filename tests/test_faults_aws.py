"""Faults on the AWS side, injected while a real ``Indexer`` runs real grocery photos through
``TitanEmbedder`` (real boto3 client: serialisation, signing, standard-mode retries, error
parsing; only the socket is replaced by ``aws_standins.ScriptedBedrock``) into
``OpenSearchIndex`` on ``fake_opensearch`` in strict (Serverless) mode over real HTTP.

The rule checked everywhere: retries where they help, a clear stop where they do not, and never
a silently missing or doubled item -- ``indexed + failed == done`` for every run, the images not
reached by a stopped run are said to be not done (``stopped``, ``error``), and a rerun with the
fault gone leaves every image in the index exactly once.

Not covered anywhere in this file (needs the real services): real error texts, rates, quotas
and retry-after hints of Bedrock, Rekognition and OpenSearch Serverless; real credential
providers refreshing (SSO, roles); AOSS's auto-creation of an index on ``_bulk`` into a missing
index (the fake answers 404 per document instead); TLS and real network partitions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from aws_standins import Fault, ScriptedBedrock
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from fake_opensearch import FAKE_KEY, FAKE_SECRET, FakeOpenSearch
from helpers import GROCERY, REPO
from PIL import Image

from search_core.aws import clients
from search_core.aws.opensearch_index import OpenSearchIndex
from search_core.aws.rekognition import RekognitionDetector
from search_core.aws.titan import TitanEmbedder
from search_core.config import Settings
from search_core.errors import BackendError
from search_core.indexing import Indexer, IndexReport
from search_core.sources import FolderSource

TRAIN = GROCERY / "train"
INDEX = "visual-search"
DIM = 256
BATCH = 8


pytestmark = pytest.mark.usefixtures("fake_aws")


@pytest.fixture(autouse=True)
def _retry_mode(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")  # what Bedrock uses by default


def _photos(n: int) -> list[Path]:
    """``n`` grocery photos with distinct content, spread over the classes."""
    if not TRAIN.is_dir():
        pytest.skip(f"shared test data not found: {TRAIN}")
    files = sorted(p for p in TRAIN.rglob("*.jpg") if p.is_file())
    step = max(1, len(files) // (3 * n))
    chosen: dict[str, Path] = {}
    for path in files[::step]:
        chosen.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
        if len(chosen) == n:
            break
    assert len(chosen) == n
    return list(chosen.values())


def _corpus(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "corpus"
    for i, path in enumerate(_photos(n)):
        target = folder / path.parent.name / f"{i:03d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return folder


@pytest.fixture
def aoss() -> FakeOpenSearch:
    with FakeOpenSearch(strict=True, service="aoss") as fake:
        yield fake


def _settings(url: str) -> Settings:
    return Settings(aws_region="us-east-1", embedder="titan", index="opensearch",
                    titan_embedding_length=DIM, titan_max_concurrency=4,
                    opensearch_endpoint=url, opensearch_auth="sigv4-aoss",
                    opensearch_index=INDEX, batch_size=BATCH)


def _indexer(url: str, fault: Callable[[int, int], Fault] | None = None,
             index: OpenSearchIndex | None = None) -> tuple[Indexer, ScriptedBedrock]:
    settings = _settings(url)
    embedder = TitanEmbedder(settings)
    stand_in = ScriptedBedrock(fault)
    embedder.client.meta.events.register("before-send.bedrock-runtime.InvokeModel", stand_in)
    index = index or OpenSearchIndex(settings, dimension=DIM, model_id=embedder.model_id)
    return Indexer(embedder, index, batch_size=BATCH, workers=2), stand_in


def _after_first_batch(indexer: Indexer, action: Callable[[], None]) -> list[int]:
    """Runs ``action`` once, right after the first batch was written (the progress callback is
    rate-limited, so it cannot be the trigger). Returns a list that then holds that count."""
    index = indexer.index
    real_add = index.add
    written: list[int] = []

    def add(vectors, items):  # type: ignore[no-untyped-def]
        added = real_add(vectors, items)
        if not written:
            written.append(added)
            action()
        return added

    index.add = add  # type: ignore[method-assign]
    return written


def _source(folder: Path) -> FolderSource:
    return FolderSource(folder, roots=(folder,))


def _shas(folder: Path) -> Counter[str]:
    return Counter(hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in folder.rglob("*") if p.is_file())


def _assert_accounted(report: IndexReport, fake: FakeOpenSearch) -> None:
    """Nothing silent: every file handled is indexed or listed as failed, and what the report
    calls indexed is exactly what the server holds."""
    assert report.indexed + report.failed + report.unchanged + report.duplicates == report.done
    assert report.done == report.total or (report.stopped and report.error), report.to_dict()
    docs = Counter(d["sha256"] for d in fake.all_docs(INDEX))
    assert all(n == 1 for n in docs.values()), "a document was written twice"


def _assert_exactly_once(folder: Path, fake: FakeOpenSearch) -> None:
    docs = Counter(d["sha256"] for d in fake.all_docs(INDEX))
    assert docs == _shas(folder), "index must hold every image exactly once"


# -- Bedrock (Titan) faults that clear: retried, every image lands once ------------------------


def _every_other_image_once(fault: Fault) -> Callable[[int, int], Fault]:
    return lambda call, attempt: fault if attempt == 1 and call % 2 else None


@pytest.mark.parametrize(
    "fault",
    [(400, "ThrottlingException"), "timeout", (500, "InternalServerException"),
     (503, "ServiceUnavailableException")],
    ids=["throttling", "read-timeout", "http-500", "http-503"],
)
def test_transient_bedrock_faults_are_retried(
    tmp_path: Path, aoss: FakeOpenSearch, fault: Fault
) -> None:
    """A transient fault on the first attempt of every other image clears on retry.

    Not covered: Bedrock's real throttling rate, how long a real read timeout takes (60 s
    here, simulated instantly), retry-after headers."""
    folder = _corpus(tmp_path, 24)
    indexer, bedrock = _indexer(aoss.url, _every_other_image_once(fault))
    report = indexer.run(_source(folder))
    assert report.failures == [] and not report.stopped and report.error == ""
    assert report.indexed == 24 and bedrock.injected >= 10
    assert set(bedrock.answered.values()) == {1}  # each image embedded once, none twice
    _assert_accounted(report, aoss)
    _assert_exactly_once(folder, aoss)


def test_bedrock_access_denied_stops_with_model_access_message(
    tmp_path: Path, aoss: FakeOpenSearch
) -> None:
    """Model access not enabled: not retried, every attempted image is listed as failed with
    the reason, and the run stops after three failed batches instead of burning through the
    whole folder. Nothing reaches the index.

    Not covered: the real AccessDenied text and IAM evaluation (a denied identity versus a
    model not enabled in the account look alike here)."""
    folder = _corpus(tmp_path, 40)
    indexer, bedrock = _indexer(aoss.url, lambda call, attempt: (403, "AccessDeniedException"))
    report = indexer.run(_source(folder))
    assert report.stopped and "model access not enabled for amazon.titan-embed-image-v1" in (
        report.error)
    assert "Bedrock console" in report.error
    assert report.indexed == 0 and report.failed == report.done == 3 * BATCH < report.total
    assert all("model access not enabled" in reason for _, reason in report.failures)
    assert bedrock.calls == report.failed  # not retried: one call per image
    _assert_accounted(report, aoss)
    assert aoss.all_docs(INDEX) == []


def test_credentials_expire_mid_run_then_rerun_completes(
    tmp_path: Path, aoss: FakeOpenSearch
) -> None:
    """The session token expires after 13 InvokeModel calls: images already embedded land,
    every later one is reported with "credentials have expired", the run stops, and a rerun
    with fresh credentials adds exactly the missing images.

    Not covered: botocore refreshing real refreshable credentials (SSO, assumed role) -- a
    static token is what expires here; the real ExpiredTokenException text."""
    folder = _corpus(tmp_path, 48)
    expire_after = 13
    indexer, bedrock = _indexer(
        aoss.url,
        lambda call, attempt: (403, "ExpiredTokenException") if call > expire_after else None)
    first = indexer.run(_source(folder))
    assert first.stopped and "credentials have expired" in first.error
    assert first.indexed == expire_after  # the answered images landed, once each
    assert first.failed and all("credentials have expired" in r for _, r in first.failures)
    assert bedrock.faults == {"ExpiredTokenException": first.failed}  # not retried
    _assert_accounted(first, aoss)
    assert len(aoss.all_docs(INDEX)) == expire_after

    rerun, fresh = _indexer(aoss.url)  # a new process with good credentials
    second = rerun.run(_source(folder))
    assert second.failures == [] and not second.stopped
    assert second.unchanged == expire_after and second.indexed == 48 - expire_after
    assert len(fresh.answered) == 48 - expire_after  # finished images are not re-embedded
    _assert_exactly_once(folder, aoss)


# -- Rekognition: the faults tests/test_aws_rekognition.py does not inject --------------------


def test_rekognition_timeouts_and_5xx_are_retried_then_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read timeouts and 5xx are retried by the client; when they do not clear, one clear
    BackendError saying to retry (no traceback, no half result). AWS_MAX_ATTEMPTS=4 keeps the
    adaptive backoff short; the default 8 behaves the same, slower.

    Not covered: Rekognition's real timeout behaviour and error texts."""
    settings = Settings(aws_region="eu-west-1", aws_max_attempts=4, aws_retry_mode="standard")
    client = boto3.client("rekognition", region_name="eu-west-1",
                          config=clients.boto_config(settings, service="rekognition"))
    calls: list[str] = []
    script: list[Fault] = ["timeout", (500, "InternalServerError"), None]

    def answer(request, **kwargs):
        from aws_standins import _aws_response

        fault = script[len(calls) % len(script)] if script else "timeout"
        calls.append(str(fault))
        if fault == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        if fault is not None:
            return _aws_response(fault[0], {"message": "injected"}, fault[1])
        return _aws_response(200, {"Labels": [{"Name": "Apple", "Confidence": 99.0, "Instances": [
            {"BoundingBox": {"Width": 0.5, "Height": 0.5, "Left": 0.1, "Top": 0.1},
             "Confidence": 99.0}]}]})

    client.meta.events.register("before-send.rekognition.DetectLabels", answer)
    detector = RekognitionDetector(settings, client=client)
    found = detector.detect(Image.new("RGB", (200, 200)))
    assert [d.label for d in found] == ["Apple"] and len(calls) == 3  # two faults survived

    script.clear()  # from now on every attempt times out
    calls.clear()
    with pytest.raises(BackendError, match=r"no answer within 60 s from Rekognition.*retry"):
        detector.detect(Image.new("RGB", (200, 200)))
    assert len(calls) == clients.max_attempts(settings) == 4


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [("ExpiredToken", 400, "credentials have expired"),
     ("UnrecognizedClientException", 400, "rejected the credentials"),
     ("ServiceUnavailableException", 503, "unavailable right now"),
     ("InternalServerError", 500, "unavailable right now")],
)
def test_rekognition_credential_and_5xx_messages(code: str, status: int, expected: str) -> None:
    """Messages for the codes the Rekognition tests do not cover (Stubber: no retries).

    Not covered: the real service's choice of codes for these conditions."""
    client = boto3.client("rekognition", region_name="eu-west-1")
    stubber = Stubber(client)
    stubber.add_client_error("detect_labels", service_error_code=code, service_message="nope",
                             http_status_code=status)
    detector = RekognitionDetector(Settings(aws_region="eu-west-1"), client=client)
    with stubber, pytest.raises(BackendError, match=expected):
        detector.detect(Image.new("RGB", (200, 200)))


# -- OpenSearch faults ------------------------------------------------------------------------


def test_opensearch_429_on_bulk_is_retried(tmp_path: Path, aoss: FakeOpenSearch) -> None:
    """Two 429 answers to ``_bulk`` in a row: opensearch-py's bulk helper backs off and resends;
    nothing lost, nothing doubled.

    Not covered: per-document 429s inside a 200 bulk answer from a real cluster, AOSS OCU
    scaling."""
    folder = _corpus(tmp_path, 16)
    aoss.fail("_bulk", 429, times=2)
    indexer, _ = _indexer(aoss.url)
    report = indexer.run(_source(folder))
    assert report.failures == [] and report.indexed == 16
    assert [status for _, _, status in aoss.injected] == [429, 429]
    _assert_exactly_once(folder, aoss)


@pytest.mark.parametrize("status", [500, 503])
def test_opensearch_5xx_on_bulk_stops_or_retries_and_rerun_has_no_doubles(
    tmp_path: Path, aoss: FakeOpenSearch, status: int
) -> None:
    """5xx on ``_bulk`` that persists (six answers, more than the transport's three retries):
    the run stops with the status in the message, counts nothing it did not write, and a
    rerun completes with every image once. (Serverless bulks are not resent by the transport
    -- see the next test -- so the stop comes at the first 5xx.)

    Not covered: a real gateway's behaviour when the bulk was partly applied before the
    error (see the after-processing case below)."""
    folder = _corpus(tmp_path, 24)
    indexer, _ = _indexer(aoss.url)
    _after_first_batch(indexer, lambda: aoss.fail("_bulk", status, times=6))
    report = indexer.run(_source(folder))
    assert report.stopped and f"({status})" in report.error and "OpenSearch bulk" in report.error
    _assert_accounted(report, aoss)
    assert report.indexed == len(aoss.all_docs(INDEX))
    aoss.faults.clear()
    rerun, _ = _indexer(aoss.url)
    second = rerun.run(_source(folder))
    assert second.failures == [] and second.unchanged == report.indexed
    _assert_exactly_once(folder, aoss)


def test_opensearch_503_after_the_bulk_was_applied_does_not_double(
    tmp_path: Path, aoss: FakeOpenSearch
) -> None:
    """The nasty case for Serverless (no document ids, so a resent bulk writes copies): the
    server applies a bulk, then the answer is a 503. The transport used to resend it (every
    document of the batch stored twice); now a Serverless bulk is never resent: the run stops
    with the 503, counts nothing it cannot vouch for, and the rerun finds the applied batch by
    its hashes and completes the index with every image once.

    Not covered: real AOSS returning 5xx after a partial write (the fake applies all of it),
    and a rerun within AOSS's ~60 s visibility delay (its hash check cannot see the batch)."""
    folder = _corpus(tmp_path, 16)
    aoss.fail("_bulk", 503, times=1, after_processing=True)
    indexer, _ = _indexer(aoss.url)
    report = indexer.run(_source(folder))
    assert report.stopped and "(503)" in report.error and report.indexed == 0
    assert len(aoss.all_docs(INDEX)) == BATCH  # applied, but not counted as indexed
    _assert_accounted(report, aoss)
    rerun, _ = _indexer(aoss.url)
    second = rerun.run(_source(folder))
    assert second.failures == [] and second.unchanged == BATCH and second.indexed == 16 - BATCH
    _assert_exactly_once(folder, aoss)


def test_opensearch_connection_refused_mid_run(tmp_path: Path) -> None:
    """The cluster goes away after the first batch (open connections dropped, new ones
    refused): the run stops with "cannot connect", nothing is counted that is not stored, and
    once the cluster is back a rerun finishes with every image once.

    Not covered: DNS failures, TLS errors, long network partitions with slow timeouts."""
    folder = _corpus(tmp_path, 24)
    fake = FakeOpenSearch(strict=True, service="aoss").start()
    try:
        indexer, _ = _indexer(fake.url)
        _after_first_batch(indexer, fake.stop)
        report = indexer.run(_source(folder))
        assert report.stopped and "cannot connect" in report.error
        assert report.indexed == len(fake.all_docs(INDEX)) == BATCH
        _assert_accounted(report, fake)
        fake.start()  # back, on a new port
        rerun, _ = _indexer(fake.url)
        second = rerun.run(_source(folder))
        assert second.failures == [] and second.unchanged == BATCH
        _assert_exactly_once(folder, fake)
    finally:
        fake.stop()


def test_index_deleted_under_us_mid_run(tmp_path: Path, aoss: FakeOpenSearch) -> None:
    """Someone deletes the index while a run writes to it: the run stops with a message
    naming the missing index; running again -- in the same process, as the app's Index tab
    does -- re-creates the index and fills it with every image exactly once.

    Not covered: AOSS auto-creating an index with a dynamic mapping on ``_bulk`` (the fake
    refuses the documents with 404 instead)."""
    folder = _corpus(tmp_path, 24)
    indexer, _ = _indexer(aoss.url)

    def delete() -> None:
        with aoss.lock:
            del aoss.indices[INDEX]

    deleted = _after_first_batch(indexer, delete)
    report = indexer.run(_source(folder))
    assert report.stopped and "no such index [visual-search]" in report.error
    assert report.indexed == deleted[0] and report.failed == 0
    same_process = indexer.run(_source(folder))  # same Indexer, same OpenSearchIndex object
    assert same_process.failures == [] and not same_process.stopped
    assert same_process.indexed == 24
    _assert_exactly_once(folder, aoss)


# -- SIGTERM during an AWS ingest, real processes ---------------------------------------------


def _count_docs(fake: FakeOpenSearch) -> int:
    return len(fake.all_docs(INDEX))


def test_sigterm_during_aws_ingest_then_rerun(tmp_path: Path) -> None:
    """``python -m search_core index`` with Titan (a stand-in process, 100 ms per call, two
    at a time, so batches of 32) into the fake AOSS is sent SIGTERM once the first batch
    landed; the same command again leaves every image exactly once.

    Not covered: ECS/Fargate's stop timeout (SIGKILL after 30 s), real network latency."""
    total = 96
    folder = _corpus(tmp_path, total)
    bedrock = subprocess.Popen([sys.executable, str(REPO / "tests" / "aws_standins.py"),
                                "--latency", "0.1"], stdout=subprocess.PIPE, text=True)
    try:
        url = bedrock.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with FakeOpenSearch(strict=True, service="aoss") as fake:
            env = {**os.environ, "SEARCH_EMBEDDER": "titan", "SEARCH_INDEX": "opensearch",
                   "SEARCH_DETECTOR": "none", "SEARCH_SAMPLE_CATALOGUE": "off",
                   "SEARCH_DATA_DIR": str(tmp_path / "data"),
                   "SEARCH_FOLDER_ROOTS": str(folder), "SEARCH_BATCH_SIZE": "8",
                   "TITAN_EMBEDDING_LENGTH": str(DIM), "TITAN_MAX_CONCURRENCY": "2",
                   "OPENSEARCH_ENDPOINT": fake.url, "OPENSEARCH_AUTH": "sigv4-aoss",
                   "OPENSEARCH_INDEX": INDEX, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": url,
                   "AWS_ACCESS_KEY_ID": FAKE_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                   "AWS_REGION": "us-east-1"}
            command = [sys.executable, "-m", "search_core", "index", str(folder)]
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while (proc.poll() is None and _count_docs(fake) < 8
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            assert proc.poll() is None, "the run finished before it could be interrupted"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode in (0, 143, -signal.SIGTERM), err[-2000:]
            assert "Traceback" not in err
            if proc.returncode == 143:  # the CLI handled it: it says how to finish the job
                assert "again" in err + out
            landed = _count_docs(fake)
            assert 0 < landed < total, "SIGTERM should have hit a run in progress"

            final = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                   timeout=120)
            assert final.returncode == 0, final.stderr[-2000:]
            summary = json.loads(final.stdout.strip().splitlines()[-1])
            assert summary["failed"] == 0 and summary["duplicates"] == 0
            assert summary["indexed"] + summary["unchanged"] == total
            assert summary["unchanged"] == landed  # resumed: what landed is kept, not redone
            docs = Counter(d["sha256"] for d in fake.all_docs(INDEX))
            assert docs == _shas(folder) and sum(docs.values()) == total
    finally:
        bedrock.terminate()
        bedrock.wait(timeout=10)
