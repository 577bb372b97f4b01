"""Security: upload and pixel limits, folder sources confined to their roots (CLI and the Index
tab), S3 URIs validated, no share link without auth, no secrets in logs, nothing served that
should not be, pinned dependencies and an offline-tolerant pip-audit."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from search_core.config import Settings
from search_core.errors import SourceError
from search_core.sources import FolderSource, check_under_roots, open_source

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "grocery" / "train" / "Fruit" / "Banana"
sys.path.insert(0, str(REPO / "bench"))
from load import AppServer, default_detector, json_output  # noqa: E402

USER, PASSWORD = "tester", "pw-Sup3r-Secret-42"
SECRETS = {"OPENSEARCH_PASSWORD": "os-pass-Secret-77",
           "AWS_SECRET_ACCESS_KEY": "aws-Secret-Key-0123456789",
           "AWS_SESSION_TOKEN": "aws-Session-Token-abcdef"}
OUTSIDE = "outside the allowed folders"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An allowed root with a few photos, a link to a folder outside it, and an auth file."""
    if not PHOTOS.is_dir():
        pytest.skip(f"shared test data not found: {PHOTOS}")
    base = tmp_path_factory.mktemp("security")
    allowed = base / "allowed"
    (allowed / "photos").mkdir(parents=True)
    for photo in sorted(PHOTOS.glob("*.jpg"))[:4]:
        shutil.copy(photo, allowed / "photos" / photo.name)
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(sorted(PHOTOS.glob("*.jpg"))[5], outside / "private.jpg")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    return allowed


# ----------------------------------------------------------------------------- in-process


def test_folder_sources_stay_under_their_roots(root: Path) -> None:
    roots = (root,)
    assert FolderSource(root / "photos", roots).uri == str(root / "photos")
    for path in (root / ".." / "outside", root / "escape", Path("/etc"),
                 Path(f"{root}-sibling"), root / "photos" / ".." / ".." / ".."):
        with pytest.raises(SourceError, match=OUTSIDE):
            FolderSource(path, roots)
    with pytest.raises(SourceError, match=OUTSIDE):
        check_under_roots(Path("../../../../../../etc"), roots)
    # a file link out of the root is listed, but reading it is refused with the reason
    (root / "photos" / "link.jpg").symlink_to(root.parent / "outside" / "private.jpg")
    try:
        source = FolderSource(root / "photos", roots)
        entry = next(e for e in source.list() if e.uri.endswith("link.jpg"))
        with pytest.raises(SourceError, match=OUTSIDE):
            source.read(entry)
    finally:
        (root / "photos" / "link.jpg").unlink()


@pytest.mark.parametrize("uri, reason", [
    ("s3://", "without a bucket"),
    ("s3://Upper-Case/x", "invalid S3 bucket name"),
    ("s3://bucket/../etc", "invalid S3 prefix"),
    ("s3://192.168.0.1/x", "invalid S3 bucket name"),
    ("s3://a/x", "invalid S3 bucket name"),
    ("file:///etc/passwd", "unsupported source"),
    ("http://169.254.169.254/latest/meta-data", "unsupported source"),
    ("", "no source given"),
])
def test_source_uris_are_validated(uri: str, reason: str) -> None:
    if uri.startswith("s3://"):
        pytest.importorskip("search_core.aws.s3_source")
    with pytest.raises(SourceError, match=re.escape(reason)):
        open_source(uri, Settings())


def test_settings_never_show_secrets() -> None:
    settings = Settings(opensearch_password=SECRETS["OPENSEARCH_PASSWORD"],
                        opensearch_username="admin")
    shown = f"{settings.describe()} {settings!r} {settings}"
    assert SECRETS["OPENSEARCH_PASSWORD"] not in shown
    assert "admin" in shown  # the rest is still there


def test_presigned_urls_and_keys_stay_out_of_logs_and_errors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = pytest.importorskip("search_core.aws.s3_source")
    from search_core.types import SourceEntry

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0000")
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, SECRETS[name])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    caplog.set_level(logging.INFO)
    source = s3.S3Source("s3://example-bucket/photos/", Settings())
    url = source.presigned_url("s3://example-bucket/photos/a.jpg", expires=60)
    assert "X-Amz-Signature=" in url  # the secret part we must never log
    with pytest.raises(SourceError) as failed:
        source.read(SourceEntry(uri="s3://example-bucket/photos/a.jpg", size_bytes=10))
    text = caplog.text + str(failed.value)
    for secret in (SECRETS["AWS_SECRET_ACCESS_KEY"], SECRETS["AWS_SESSION_TOKEN"],
                   "X-Amz-Signature", "X-Amz-Credential"):
        assert secret not in text


def test_share_link_refuses_to_start_without_auth(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from search_core import server

    for name in ("SEARCH_AUTH", "SEARCH_AUTH_FILE"):
        monkeypatch.delenv(name, raising=False)

    def never(*_: object) -> None:
        raise AssertionError("no UI may be built without auth")

    assert server.main(never, ["--share"]) == 2
    assert server.SHARE_NEEDS_AUTH in capsys.readouterr().err
    monkeypatch.setenv("GRADIO_SHARE", "true")
    assert server.main(never, []) == 2


def test_runtime_dependencies_are_pinned() -> None:
    for name in ("requirements.txt", "requirements-clip.txt"):
        path = REPO / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[\w,\-]+\])?==[\w.+\-]+", line), (
                    f"{name}: {line!r} is not pinned with ==")


# ----------------------------------------------------------------------------- pip-audit


def _audit(requirements: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "tools" / "audit.sh"), str(requirements)],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)


def test_audit_skips_cleanly_when_the_database_is_unreachable(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("requests==2.0.0\n")  # vulnerable, but nobody can tell us
    dead = "http://127.0.0.1:9"
    run = _audit(requirements, HTTPS_PROXY=dead, HTTP_PROXY=dead, https_proxy=dead,
                 http_proxy=dead, NO_PROXY="", no_proxy="")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped" in (run.stdout + run.stderr).lower()


def test_audit_fails_on_a_known_vulnerability(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("requests==2.0.0\n")
    run = _audit(requirements)
    if "skipped" in (run.stdout + run.stderr).lower():
        pytest.skip("vulnerability database unreachable from here")
    assert run.returncode != 0, run.stdout + run.stderr
    assert "requests" in run.stdout + run.stderr


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str, root: Path, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SEARCH_DATA_DIR": str(tmp / "data"), "SEARCH_DETECTOR": "none",
            "SEARCH_SAMPLE_CATALOGUE": "off", "SEARCH_FOLDER_ROOTS": str(root), **env}
    return subprocess.run([sys.executable, "-m", "search_core", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=300)


def test_cli_is_not_bound_by_the_web_allow_list(root: Path, tmp_path: Path) -> None:
    """SEARCH_FOLDER_ROOTS guards the web UI; the owner's command line indexes any folder."""
    run = _cli("index", f"{root}/../outside", root=root, tmp=tmp_path)
    assert run.returncode == 0, run.stderr
    stats = _cli("stats", root=root, tmp=tmp_path)
    assert json.loads(stats.stdout.strip().splitlines()[-1])["count"] == 1


def test_cli_upload_and_pixel_limits(root: Path, tmp_path: Path) -> None:
    photo = next((root / "photos").glob("*.jpg"))
    assert photo.stat().st_size > 20 * 1024
    small = _cli("search", str(photo), root=root, tmp=tmp_path, SEARCH_MAX_UPLOAD_MB="0.02")
    assert small.returncode != 0 and "too large" in small.stderr and "limit is" in small.stderr
    pixels = _cli("search", str(photo), root=root, tmp=tmp_path, SEARCH_MAX_PIXELS="10000")
    assert pixels.returncode != 0 and "over the limit of 10,000 pixels" in pixels.stderr
    indexed = _cli("index", str(root / "photos"), root=root, tmp=tmp_path,
                   SEARCH_MAX_PIXELS="10000")
    assert indexed.returncode == 0 and indexed.stderr.count("over the limit") == 4


# ----------------------------------------------------------------------------- web app


@pytest.fixture(scope="module")
def app(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    server = AppServer(tmp_path_factory.mktemp("app"), SEARCH_AUTH=f"{USER}:{PASSWORD}",
                       SEARCH_FOLDER_ROOTS=str(root), SEARCH_DETECTOR=default_detector(),
                       LOG_LEVEL="DEBUG", **SECRETS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app: AppServer):
    from gradio_client import Client

    client = Client(app.url, auth=(USER, PASSWORD), verbose=False)
    yield client
    client.close()


def test_app_needs_login_but_health_checks_do_not(app: AppServer) -> None:
    assert httpx.get(f"{app.url}/ping").status_code == 200
    assert httpx.get(f"{app.url}/healthz").status_code == 200
    assert httpx.get(f"{app.url}/gradio_api/info").status_code in (401, 403)
    refused = httpx.post(f"{app.url}/login", data={"username": USER, "password": "wrong"})
    assert refused.status_code in (400, 401)
    from gradio_client import Client

    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, not a session
        Client(app.url, verbose=False)


def test_index_tab_refuses_sources_outside_the_roots(app: AppServer, client,
                                                     root: Path) -> None:
    for source, reason in (("/etc", OUTSIDE), ("../../../../../../etc", OUTSIDE),
                           (f"{root}/escape", OUTSIDE), (f"{root}/../outside", OUTSIDE),
                           ("file:///etc/passwd", "unsupported source")):
        progress, counts, _failures, stats, _timer = client.predict(
            source, False, api_name="/start_index")
        assert counts.startswith("⚠️") and reason in counts, (source, counts)
        assert "No indexing job yet" in progress  # refused before any job started
    assert json_output(stats).get("count") == 0


def test_app_serves_no_files_beyond_what_it_shows(app: AppServer, client,
                                                  root: Path) -> None:
    """The gallery sends downscaled previews, so no raw file needs to be downloadable: not
    the index database, not the repository (``.git``, auth files), not the catalogue."""
    client.predict(str(root / "photos"), False, api_name="/start_index")
    data_dir = Path(app.env["SEARCH_DATA_DIR"])
    cookies = httpx.post(f"{app.url}/login",
                         data={"username": USER, "password": PASSWORD}).cookies
    for path in (data_dir / "index.sqlite3", REPO / "app.py", REPO / ".git" / "config",
                 next((root / "photos").glob("*.jpg")), Path("/etc/passwd")):
        got = httpx.get(f"{app.url}/gradio_api/file={path}", cookies=cookies)
        assert got.status_code in (403, 404), f"{path} is downloadable"


def test_no_secrets_in_the_server_log(app: AppServer, client) -> None:
    client.predict(api_name="/index_status")
    httpx.post(f"{app.url}/login", data={"username": USER, "password": PASSWORD + "x"})
    log = app.log()
    assert "listening on" in log  # the log is really being captured
    for secret in (PASSWORD, *SECRETS.values()):
        assert secret not in log


def test_audit_exit_codes_follow_pip_audit(tmp_path: Path) -> None:
    """The script's own logic, with a stand-in pip-audit (the real database may be out of
    reach): findings fail the build, a clean report passes."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("requests==2.0.0\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pip-audit"
    path = f"{bin_dir}:{os.environ['PATH']}"
    fake.write_text("#!/bin/sh\necho 'Found 2 known vulnerabilities in 1 package'\n"
                    "echo 'requests 2.0.0 PYSEC-2014-13 2.3.0'\nexit 1\n")
    fake.chmod(0o755)
    found = _audit(requirements, PATH=path)
    assert found.returncode == 1 and "vulnerabilities found" in found.stderr
    fake.write_text("#!/bin/sh\necho 'No known vulnerabilities found'\nexit 0\n")
    clean = _audit(requirements, PATH=path)
    assert clean.returncode == 0 and "no known vulnerabilities" in clean.stdout
