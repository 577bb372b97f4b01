"""Worst-case memory: near-limit images through the CLI and the real server, and the temp folder.

    python bench/memory.py                      # 7000x7000 images, 200 uploads (~5-10 min)
    python bench/memory.py --side 5000 --uploads 50
    python bench/memory.py --repo /path/to/other/checkout   # the same, for another version

What it prints:
1. peak RSS of one ``python -m search_core search IMAGE`` per near-limit kind (7000² RGBA PNG,
   16-bit grey PNG, float TIFF, palette PNG with transparency) and of a small JPEG (the models
   alone), from ``wait4`` (the kernel's maximum resident size of the child);
2. the server's peak RSS (VmHWM) and RSS afterwards when four users search with the four kinds
   at once (gradio_client, the way ``bench/load.py`` does);
3. the app's temp folders after N uploads analysed through the server.
Each figure is printed with the load average: the machine may be shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GROCERY, REPO, machine, table
from load import free_port, proc_status_kb

CACHE = Path(tempfile.gettempdir()) / "bench-memory-images"


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def near_limit_images(side: int) -> dict[str, bytes]:
    """The memory-hungry kinds of issue 9, ``side`` x ``side``: RGBA, 16-bit grey, float TIFF,
    palette with transparency (smooth content, so they compress like photos and stay under the
    upload limit)."""
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    grey = np.add.outer(ramp, ramp) / 2
    rgba = np.stack([grey * 255, grey[::-1] * 255, grey.T * 255,
                     np.where(grey > 0.3, 255, 0)], axis=-1).astype(np.uint8)
    rgba_image = Image.fromarray(rgba, "RGBA")
    del rgba
    palette = rgba_image.convert("RGB").quantize(64)
    return {
        "rgba.png": _encoded(rgba_image, "PNG", compress_level=1),
        "grey16.png": _encoded(Image.fromarray((grey * 65535).astype(np.uint16)), "PNG"),
        # 256 levels (as 16-bit values) so that deflate keeps it under the upload limit
        "float.tif": _encoded(Image.fromarray((np.round(grey * 255) * 257).astype(np.float32)),
                              "TIFF", compression="tiff_adobe_deflate"),
        "palette-alpha.png": _encoded(palette, "PNG", transparency=0),
    }


def image_files(side: int) -> dict[str, Path]:
    folder = CACHE / str(side)
    names = ("rgba.png", "grey16.png", "float.tif", "palette-alpha.png")
    if not all((folder / n).exists() for n in names):
        # In a child process: a CLI started later inherits this process's resident size in
        # its ru_maxrss, so the benchmark itself must never hold the big arrays.
        subprocess.run([sys.executable, __file__, "--make-images", str(side)], check=True)
    return {name: folder / name for name in names}


def make_images(side: int) -> None:
    folder = CACHE / str(side)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in near_limit_images(side).items():
        (folder / name).write_bytes(data)


def load() -> float:
    return os.getloadavg()[0]


def base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEARCH_AUTH", "SEARCH_AUTH_FILE", "GRADIO_SHARE", "PORT", "HOST")}
    env.update(SEARCH_DATA_DIR=str(work / "data"), GRADIO_TEMP_DIR=str(work / "gradio"),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False",
               SEARCH_SAMPLE_CATALOGUE="off")
    return env


def cli_peak_mb(repo: Path, env: dict[str, str], *args: str) -> tuple[float, int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "search_core", *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, code, err.strip().splitlines()[-1] if err.strip() else ""


class Server:
    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["SEARCH_DATA_DIR"]).parent / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     env={**env, "HOST": "127.0.0.1", "PORT": str(self.port)})

    def wait_ready(self, deadline_s: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited")
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server not ready")

    def mb(self, key: str) -> float:
        return proc_status_kb(self.proc.pid, key) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def folder_size(folder: Path, since: float = 0.0) -> tuple[int, int]:
    files = size = 0
    for directory, _dirs, names in os.walk(folder):
        for name in names:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if info.st_mtime >= since:
                files += 1
                size += info.st_size
    return files, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to measure")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--temp-cap-mb", type=float, default=None,
                        help="SEARCH_TEMP_MAX_MB for the server (default: the app's default)")
    parser.add_argument("--make-images", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_images:
        make_images(args.make_images)
        return 0
    repo = args.repo.resolve()
    images = image_files(args.side)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    env = base_env(work)
    if args.temp_cap_mb is not None:
        env["SEARCH_TEMP_MAX_MB"] = str(args.temp_cap_mb)
    small = next(iter(sorted((GROCERY / "val").rglob("*.jpg"))))
    print(f"repo {repo}; images {args.side}x{args.side}: "
          + ", ".join(f"{n} {p.stat().st_size / 2**20:.1f} MB" for n, p in images.items()))
    subprocess.run([sys.executable, "-m", "search_core", "index", str(repo / "samples" /
                    "catalogue")], cwd=repo, env=env, capture_output=True, check=True)
    rows = []
    if not args.skip_cli:
        for name, path in {"small JPEG (models only)": small, **images}.items():
            peak, code, err = cli_peak_mb(repo, env, "search", str(path), "--k", "3")
            rows.append([name, f"{peak:.0f}", code, err[:60], f"{load():.1f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
        print(table(rows, ["CLI search", "peak RSS MB", "exit", "stderr", "load"]))

    if args.skip_server:
        return 0
    from gradio_client import Client, handle_file

    server = Server(repo, env)
    started = time.time()
    try:
        server.wait_ready()
        idle = server.mb("VmRSS")
        errors: list[str] = []

        def search(path: Path) -> None:
            client = Client(server.url, verbose=False)
            try:
                gallery, status = client.predict(handle_file(str(path)), "whole", 5, "", 0, 0,
                                                 100, 100, api_name="/search")
                if not gallery:
                    errors.append(f"{path.name}: {status}")
            except Exception as exc:  # counted, not fatal: the figure still matters
                errors.append(f"{path.name}: {exc!r}"[:200])
            finally:
                client.close()

        threads = [threading.Thread(target=search, args=(p,)) for p in images.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(2)
        print(table([[f"{idle:.0f}", f"{server.mb('VmHWM'):.0f}", f"{server.mb('VmRSS'):.0f}",
                      len(errors), f"{load():.1f}"]],
                    ["server RSS idle MB", "peak (VmHWM) MB, 4 at once", "RSS after MB",
                     "errors", "load"]))
        for error in errors:
            print("  error:", error)
        photos = sorted((GROCERY / "train").rglob("*.jpg"))[:args.uploads]
        client = Client(server.url, verbose=False)
        upload_mb = sum(p.stat().st_size for p in photos) / 2**20
        for photo in photos:
            client.predict(handle_file(str(photo)), api_name="/analyze")
        client.close()
        time.sleep(1)
        gradio_files, gradio_bytes = folder_size(work / "gradio")
        shared_files, shared_bytes = folder_size(
            Path(tempfile.gettempdir()) / "visual-search-images", since=started)
        print(table([[len(photos), f"{upload_mb:.1f}", gradio_files,
                      f"{gradio_bytes / 2**20:.1f}", shared_files,
                      f"{shared_bytes / 2**20:.1f}", f"{load():.1f}"]],
                    ["uploads analysed", "upload MB", "GRADIO_TEMP_DIR files", "MB",
                     "/tmp/visual-search-images new files", "MB", "load"]))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"machine": machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
