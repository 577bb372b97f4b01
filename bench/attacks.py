"""The attacks of issue 9, run against the real web app; prints what each one got.

    python bench/attacks.py            # without auth
    python bench/attacks.py --auth     # with SEARCH_AUTH set

Each attack names a server file in an image input (``{"path": ..., "meta": {"_type":
"gradio.FileData"}}``) through ``/gradio_api/call/analyze`` and ``/search``; then login brute
force, routes without auth, and how much the temp folders keep after N uploads. Used by
``tests/test_security_uploads.py`` too (the helpers below), so the benchmark and the tests attack
the same way. ``/dev/zero`` goes last: on an unprotected server it hangs everything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GROCERY, machine, table
from load import AppServer

USER, PASSWORD = "owner", "pw-Attack-Test-9"


@dataclass
class Outcome:
    """What one API call got: the SSE event ("complete"/"error"/"timeout") and its text."""

    event: str
    text: str

    @property
    def refused(self) -> bool:
        return self.event == "error" or "⚠️" in self.text


def file_payload(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def login(url: str, user: str = USER, password: str = PASSWORD) -> httpx.Cookies:
    got = httpx.post(f"{url}/login", data={"username": user, "password": password}, timeout=10)
    return got.cookies


def call(url: str, api: str, data: list[Any], cookies: httpx.Cookies | None = None,
         timeout: float = 60.0) -> Outcome:
    """One ``/gradio_api/call/<api>`` round trip (the plain-HTTP way of the API docs)."""
    try:
        started = httpx.post(f"{url}/gradio_api/call/{api}", json={"data": data},
                             cookies=cookies, timeout=timeout)
        if started.status_code != 200:
            return Outcome("http", f"{started.status_code} {started.text[:200]}")
        event_id = started.json()["event_id"]
        event, text = "none", ""
        with httpx.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", cookies=cookies,
                          timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    text = line.split(":", 1)[1].strip()
                    break
        return Outcome(event, text)
    except httpx.TimeoutException:
        return Outcome("timeout", "")


def search_args(path: str) -> list[Any]:
    return [file_payload(path), "whole", 3, "", 0, 0, 100, 100]


def ping_s(url: str) -> float | None:
    started = time.perf_counter()
    try:
        httpx.get(f"{url}/ping", timeout=5).raise_for_status()
    except httpx.HTTPError:
        return None
    return time.perf_counter() - started


def tree_bytes(*folders: Path) -> tuple[int, int]:
    """(files, bytes) under the folders (regular files, links not followed)."""
    files = size = 0
    for folder in folders:
        for directory, _dirs, names in os.walk(folder):
            for name in names:
                try:
                    stat = os.lstat(os.path.join(directory, name))
                except OSError:
                    continue
                files += 1
                size += stat.st_size
    return files, size


def copies_of(folders: list[Path], secrets: list[bytes]) -> list[str]:
    """Files in the temp folders holding exactly one of ``secrets`` (a copy of a named file);
    links are not followed (a planted link is not a copy)."""
    import hashlib

    wanted = {(len(s), hashlib.sha256(s).hexdigest()) for s in secrets if s}
    sizes = {size for size, _ in wanted}
    found = []
    for folder in folders:
        for directory, _dirs, names in os.walk(folder):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                    if info.st_size not in sizes or os.path.islink(path):
                        continue
                    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                except OSError:
                    continue
                if (info.st_size, digest) in wanted:
                    found.append(path)
    return found


def secret_contents(targets: dict[str, str]) -> list[bytes]:
    """What a leaked copy would hold: the readable regular files among the targets."""
    out = []
    for path in targets.values():
        try:
            if os.path.isfile(path) and os.path.getsize(path) < 2**20:
                out.append(Path(path).read_bytes())
        except OSError:
            pass
    return out


def make_targets(base: Path) -> dict[str, str]:
    """The files an attacker names: outside image, secrets, special files, tricks."""
    base.mkdir(parents=True, exist_ok=True)
    outside = base / "outside.jpg"
    photo = next(iter(sorted((GROCERY / "train").rglob("*.jpg"))))
    outside.write_bytes(photo.read_bytes())
    fifo = base / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    sparse = base / "sparse.bin"
    with sparse.open("wb") as handle:
        handle.truncate(2 * 1024**3)
    secret = base / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT\n")
    return {
        "outside image": str(outside),
        "/etc/shadow": "/etc/shadow",
        "/proc/self/environ": "/proc/self/environ",
        "a directory (/root)": "/root",
        "a FIFO": str(fifo),
        "2 GiB sparse file": str(sparse),
        "../ trick": f"{tempfile.gettempdir()}/../../../../{str(secret).lstrip('/')}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--skip-dev-zero", action="store_true")
    parser.add_argument("--skip-files", action="store_true", help="only login and routes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="attacks-"))
    env = {"SEARCH_AUTH": f"{USER}:{PASSWORD}"} if args.auth else {}
    server = AppServer(work, **env)
    server.start()
    cookies = login(server.url) if args.auth else None
    gradio_tmp = Path(server.env["GRADIO_TEMP_DIR"])
    targets = make_targets(work / "targets")
    # The upload folder attack: a symlink placed inside Gradio's own folder pointing out.
    gradio_tmp.mkdir(parents=True, exist_ok=True)
    link = gradio_tmp / "planted" / "link.jpg"
    link.parent.mkdir(exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(targets["outside image"])
    targets["symlink in upload folder"] = str(link)
    rows = []
    try:
        for name, path in ({} if args.skip_files else targets).items():
            for api in ("analyze", "search"):
                data = [file_payload(path)] if api == "analyze" else search_args(path)
                got = call(server.url, api, data, cookies, timeout=20)
                rows.append([name, api, got.event, got.text[:90], f"{ping_s(server.url)}"])
                print(" | ".join(rows[-1]), flush=True)
        leaked = copies_of([gradio_tmp], secret_contents(targets))
        print(table(rows, ["attack", "api", "event", "answer", "ping s"]))
        print(f"copies of named files in temp folders: {len(leaked)}")
        statuses: dict[int, int] = {}
        started = time.perf_counter()
        for attempt in range(200):
            got = httpx.post(f"{server.url}/login",
                             data={"username": USER, "password": f"wrong{attempt}"}, timeout=10)
            statuses[got.status_code] = statuses.get(got.status_code, 0) + 1
        print(f"200 wrong passwords in {time.perf_counter() - started:.1f} s: {statuses}")
        for route in ("/openapi.json", "/docs", "/gradio_api/user", "/gradio_api/info",
                      "/config", "/gradio_api/openapi.json"):
            got = httpx.get(server.url + route, timeout=10)
            print(f"GET {route} without login: {got.status_code}")
        if not args.skip_dev_zero:
            got = call(server.url, "analyze", [file_payload("/dev/zero")], cookies, timeout=15)
            print(f"/dev/zero: {got.event} {got.text[:90]}; ping after: {ping_s(server.url)}; "
                  f"server RSS {server.rss_mb():.0f} MB")
    finally:
        code = server.stop(timeout=20)
        print(f"server stopped with {code}; {machine()}")
        print(json.dumps({"workdir": str(work)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
