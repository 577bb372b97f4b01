"""The image's install steps work in a fresh virtual environment: the same requirements file and
the same commands as the Dockerfile, then the app's imports, a model load and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements.txt"
# The Dockerfile's commands, word for word (checked below so the two cannot drift apart).
VENV_COMMAND = "python3 -m venv /opt/venv"
PIP_COMMAND = "pip install --no-compile -r /app/requirements.txt"

pytestmark = pytest.mark.slow


def test_dockerfile_uses_these_install_commands() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert VENV_COMMAND in dockerfile
    assert PIP_COMMAND in dockerfile
    assert "COPY requirements.txt requirements-clip.txt /app/" in dockerfile


def test_requirements_install_into_fresh_venv(tmp_path: Path) -> None:
    if not REQUIREMENTS.exists():
        pytest.fail("requirements.txt is missing: the image cannot be built without it")
    venv = tmp_path / "venv"
    # Same commands as the Dockerfile, with this machine's python and a temporary venv path.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [
            str(python),
            "-m",
            *PIP_COMMAND.replace("/app/requirements.txt", str(REQUIREMENTS)).split(),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    env = {
        **os.environ,
        "SEARCH_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    # The serving stack imports and the default models load with nothing but requirements.txt.
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import app, search_core.server, search_core.cli;"
            "from search_core.factory import get_pipeline;"
            "p = get_pipeline(); p.warm_up(); h = p.health();"
            "assert h['model_loaded'] and h['index_reachable'], h; print('ok', h['embedder'])",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.startswith("ok ")

    stats = subprocess.run(
        [str(python), "-m", "search_core", "stats"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stats.returncode == 0, stats.stderr[-3000:]
    assert '"count": 0' in stats.stdout
    # No GPU stack sneaks in through a dependency: the image is CPU-only.
    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=120)
    assert torch.returncode != 0, "torch got installed; the app runs on ONNX Runtime only"
