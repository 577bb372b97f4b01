"""One base class for every local model: lazy loading under a lock, checksum-verified files.

Loading lazily keeps start-up fast and lets the app answer /ping before the first model is in
memory; the lock makes concurrent first requests load the model exactly once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

from search_core.errors import ConfigError


@cache
def _checksums(models_dir: Path) -> dict[str, str]:
    sums_file = models_dir / "SHA256SUMS"
    if not sums_file.exists():
        return {}
    result = {}
    for line in sums_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[1].lstrip("*")] = parts[0]
    return result


def verify_model_file(models_dir: Path, filename: str) -> Path:
    """Path of a model file after checking it against models/SHA256SUMS (a truncated or
    swapped file otherwise fails later with an obscure ONNX Runtime error)."""
    path = models_dir / filename
    if not path.exists():
        raise ConfigError(
            f"model file {path} is missing; run `python tools/build_models.py` or restore models/"
        )
    expected = _checksums(models_dir).get(filename)
    if expected:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise ConfigError(f"model file {path} does not match models/SHA256SUMS")
    return path


class OnnxModel:
    """Owns one ONNX Runtime session, created on first use."""

    #: file name inside the models directory
    filename: str = ""
    #: class names, one per line, index-aligned with the model's outputs ("" = none)
    labels_file: str = ""

    def __init__(self, models_dir: Path, threads: int = 0) -> None:
        self.models_dir = Path(models_dir)
        self.threads = threads
        self._session: Any = None
        self._labels: list[str] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._create_session()
        return self._session

    @property
    def labels(self) -> list[str]:
        """The class names of :attr:`labels_file`, read (checksum-verified) on first use."""
        if self._labels is None:
            path = verify_model_file(self.models_dir, self.labels_file)
            self._labels = path.read_text(encoding="utf-8").splitlines()
        return self._labels

    def load(self) -> None:
        """Loads now (warm-up at start-up in the server, so the first user does not wait)."""
        _ = self.session

    def _create_session(self) -> Any:
        import onnxruntime as ort

        path = verify_model_file(self.models_dir, self.filename)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = self.threads or (os.cpu_count() or 1)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No busy-waiting between operators: spinning threads burn the cores that decoding
        # (ingest) and other requests need; measured +30-60 % model throughput on a loaded
        # 2-core machine and a higher ingest/model ratio (docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._after_load(session)
        return session

    def _after_load(self, session: Any) -> None:
        """Subclasses read input/output names here."""
