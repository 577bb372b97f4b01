"""Every setting in one place, read from environment variables.

The README's configuration table is generated from :data:`SETTINGS_DOC` so the two cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from search_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name, "1" if default else "0").lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _env_list(name: str, default: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in _env(name, default).split(",") if p.strip())


def _optional_path(raw: str) -> Path | None:
    if raw.lower() in {"off", "none", "false", "0"}:
        return None
    return Path(raw).expanduser().resolve()


def memory_limit_mb() -> int:
    """The container's memory limit (cgroup v2/v1) or the machine's RAM, in MiB."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 50:
            return int(raw) // 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 2048


def decodes_for_memory(limit_mb: int | None = None) -> int:
    """Concurrent decodes that fit: ~800 MiB for the process and models, ~350 MiB per search
    of a 50 MP image (one full-size buffer, the input bytes and Gradio's copy), 1 to 4."""
    limit = memory_limit_mb() if limit_mb is None else limit_mb
    return max(1, min(4, (limit - 800) // 350))


# (variable, default, meaning) -- the README table is rendered from this list.
SETTINGS_DOC: list[tuple[str, str, str]] = [
    ("SEARCH_DATA_DIR", "./data", "Local data directory: the local index and its metadata."),
    ("SEARCH_DETECTOR", "local", "`local` (SSD + NanoDet, ONNX), `rekognition`, or `none`."),
    (
        "SEARCH_EMBEDDER",
        "efficientnet",
        "`efficientnet` (offline default), `clip` (transformers, downloads weights), or `titan` (Bedrock).",
    ),
    (
        "SEARCH_INDEX",
        "local",
        "`local` (NumPy exact / FAISS HNSW in SEARCH_DATA_DIR) or `opensearch`.",
    ),
    ("SEARCH_MODELS_DIR", "./models", "Folder holding the converted ONNX files and SHA256SUMS."),
    ("SEARCH_ONNX_THREADS", "0", "ONNX Runtime intra-op threads (0 = one per core)."),
    ("SEARCH_BATCH_SIZE", "16", "Images per embedding batch while indexing."),
    (
        "SEARCH_MIN_DETECTION_CONFIDENCE",
        "35",
        "Detections below this confidence (percent) are dropped.",
    ),
    (
        "SEARCH_MAX_PIXELS",
        "50000000",
        "Decompression-bomb guard: images with more pixels are refused.",
    ),
    ("SEARCH_MAX_SIDE", "2048", "Images are downscaled so their long side is at most this."),
    ("SEARCH_MAX_UPLOAD_MB", "50", "Uploads and source files larger than this are refused."),
    (
        "SEARCH_MAX_DECODES",
        "0 (from the memory limit)",
        "Images decoded at once (each up to ~350 MB at 50 MP); 0 = (memory limit - 800 MB) / 350 MB, 1 to 4.",
    ),
    (
        "SEARCH_TEMP_MAX_MB",
        "500",
        "Size cap of the web app's temp folder (uploads, Gradio cache, result images); least recently used files are deleted first.",
    ),
    (
        "SEARCH_LOGIN_MAX_FAILURES",
        "10",
        "Failed logins per client or user before a lock-out (slowed down from the 4th).",
    ),
    ("SEARCH_LOGIN_LOCKOUT_S", "300", "Seconds a locked client or user is refused (HTTP 429)."),
    (
        "SEARCH_FOLDER_ROOTS",
        "(repo, ../shared/data, SEARCH_DATA_DIR)",
        "Comma-separated roots that folder sources must lie under (no path traversal).",
    ),
    (
        "SEARCH_HNSW_THRESHOLD",
        "20000",
        "Local index switches from exact NumPy search to FAISS HNSW above this many vectors.",
    ),
    (
        "SEARCH_SAMPLE_CATALOGUE",
        "./samples/catalogue",
        "Indexed in the background at app start when the index is empty (`off` disables).",
    ),
    (
        "SEARCH_TAGS",
        "all",
        "Automatic tags stored at index time: `all` (detector labels + EfficientNet's ImageNet "
        "labels; the detector costs ingest speed), `keywords` (ImageNet labels only, free), `off`.",
    ),
    (
        "SEARCH_NEAR_DUPLICATE",
        "0.89",
        'Cosine from which a result folds into a higher one ("+N similar"); calibrated by '
        "bench/near_duplicates.py for EfficientNet-Lite0; 0 disables.",
    ),
    (
        "SEARCH_CLIP_MODEL",
        "openai/clip-vit-base-patch32",
        "Hugging Face model id for `SEARCH_EMBEDDER=clip`.",
    ),
    (
        "SEARCH_ADAPT",
        "auto",
        "`auto`: learn a projection from the catalogue's folders/labels after each ingest and use "
        "it when it wins on held-out catalogue images; `off`: plain embedding.",
    ),
    (
        "SEARCH_VIEW_CROP",
        "0.8",
        "Centre share of the image the EfficientNet embedder sees (queries and catalogue; "
        "changing it needs a re-index).",
    ),
    (
        "SEARCH_RESULTS_PER_LABEL",
        "0",
        "At most this many results of one catalogue label (folder = product), so the first page "
        "shows more products; `0` = no cap.",
    ),
    ("AWS_REGION", "us-east-1", "Region for Rekognition, Bedrock, S3 and OpenSearch Serverless."),
    ("REKOGNITION_MAX_LABELS", "50", "DetectLabels MaxLabels."),
    ("REKOGNITION_MIN_CONFIDENCE", "55", "DetectLabels MinConfidence (percent)."),
    (
        "TITAN_MODEL_ID",
        "amazon.titan-embed-image-v1",
        "Bedrock model id of Titan Multimodal Embeddings.",
    ),
    ("TITAN_EMBEDDING_LENGTH", "1024", "Titan outputEmbeddingLength: 256, 384 or 1024."),
    ("TITAN_MAX_CONCURRENCY", "8", "Parallel Bedrock calls while indexing."),
    (
        "AWS_RETRY_MODE",
        "(adaptive; standard for Bedrock)",
        "botocore retry mode for every AWS client; by default Bedrock's bulk calls use `standard` (see search_core/aws/clients.py).",
    ),
    ("AWS_MAX_ATTEMPTS", "8", "Total attempts per AWS call, first try included."),
    ("OPENSEARCH_ENDPOINT", "", "OpenSearch URL, e.g. https://xxxx.us-east-1.aoss.amazonaws.com."),
    ("OPENSEARCH_INDEX", "visual-search", "Index name."),
    (
        "OPENSEARCH_AUTH",
        "auto",
        "`sigv4-aoss`, `sigv4-es`, `basic`, `none`, or `auto` (from the endpoint host).",
    ),
    ("OPENSEARCH_USERNAME", "", "Basic-auth user for self-hosted OpenSearch."),
    ("OPENSEARCH_PASSWORD", "", "Basic-auth password for self-hosted OpenSearch."),
    ("OPENSEARCH_HNSW_M", "16", "HNSW `m` of the knn_vector field."),
    ("OPENSEARCH_EF_CONSTRUCTION", "128", "HNSW `ef_construction`."),
    ("HOST", "127.0.0.1 (0.0.0.0 in the container)", "Interface the web app listens on."),
    ("PORT", "7860", "Port of the web app (8080 on App Runner)."),
    (
        "GRADIO_SHARE",
        "false",
        "Create a public share link (needs internet and auth; expires after 72 h).",
    ),
    ("SEARCH_AUTH", "", "`user:password` for basic authentication of the web app."),
    ("SEARCH_AUTH_FILE", "", "File holding `user:password` lines (alternative to SEARCH_AUTH)."),
    ("SEARCH_ROOT_PATH", "", "Root path when served behind a proxy under a sub-path."),
]


@dataclass(frozen=True)
class Settings:
    """Immutable snapshot of the configuration; build it with :meth:`from_env`."""

    data_dir: Path = Path("./data")
    detector: str = "local"
    embedder: str = "efficientnet"
    index: str = "local"
    models_dir: Path = MODELS_DIR
    onnx_threads: int = 0
    batch_size: int = 16
    min_detection_confidence: float = 35.0
    max_pixels: int = 50_000_000
    max_side: int = 2048
    max_upload_bytes: int = 50 * 1024 * 1024
    max_decodes: int = 1
    temp_max_bytes: int = 500 * 1024 * 1024
    login_max_failures: int = 10
    login_lockout_s: float = 300.0
    folder_roots: tuple[Path, ...] = ()
    hnsw_threshold: int = 20_000
    sample_catalogue: Path | None = REPO_ROOT / "samples" / "catalogue"
    tags: str = "all"
    near_duplicate: float = 0.89
    clip_model: str = "openai/clip-vit-base-patch32"
    adapt: str = "auto"
    view_crop: float = 0.8
    results_per_label: int = 0
    aws_region: str = "us-east-1"
    rekognition_max_labels: int = 50
    rekognition_min_confidence: float = 55.0
    titan_model_id: str = "amazon.titan-embed-image-v1"
    titan_embedding_length: int = 1024
    titan_max_concurrency: int = 8
    opensearch_endpoint: str = ""
    opensearch_index: str = "visual-search"
    opensearch_auth: str = "auto"
    opensearch_username: str = ""
    opensearch_password: str = field(default="", repr=False)
    opensearch_hnsw_m: int = 16
    opensearch_ef_construction: int = 128

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("SEARCH_DATA_DIR", "./data")).expanduser().resolve()
        default_roots = f"{REPO_ROOT},{REPO_ROOT.parent / 'shared' / 'data'},{data_dir}"
        settings = cls(
            data_dir=data_dir,
            detector=_env("SEARCH_DETECTOR", "local").lower(),
            embedder=_env("SEARCH_EMBEDDER", "efficientnet").lower(),
            index=_env("SEARCH_INDEX", "local").lower(),
            models_dir=Path(_env("SEARCH_MODELS_DIR", str(MODELS_DIR))).expanduser().resolve(),
            onnx_threads=_env_int("SEARCH_ONNX_THREADS", 0),
            batch_size=max(1, _env_int("SEARCH_BATCH_SIZE", 16)),
            min_detection_confidence=_env_float("SEARCH_MIN_DETECTION_CONFIDENCE", 35.0),
            max_pixels=_env_int("SEARCH_MAX_PIXELS", 50_000_000),
            max_side=_env_int("SEARCH_MAX_SIDE", 2048),
            max_upload_bytes=int(_env_float("SEARCH_MAX_UPLOAD_MB", 50) * 1024 * 1024),
            max_decodes=_env_int("SEARCH_MAX_DECODES", 0) or decodes_for_memory(),
            temp_max_bytes=int(_env_float("SEARCH_TEMP_MAX_MB", 500) * 1024 * 1024),
            login_max_failures=max(1, _env_int("SEARCH_LOGIN_MAX_FAILURES", 10)),
            login_lockout_s=max(0.0, _env_float("SEARCH_LOGIN_LOCKOUT_S", 300.0)),
            folder_roots=tuple(
                Path(p).expanduser().resolve()
                for p in _env_list("SEARCH_FOLDER_ROOTS", default_roots)
            ),
            hnsw_threshold=_env_int("SEARCH_HNSW_THRESHOLD", 20_000),
            sample_catalogue=_optional_path(
                _env("SEARCH_SAMPLE_CATALOGUE", str(REPO_ROOT / "samples" / "catalogue"))
            ),
            tags={"true": "all", "1": "all", "false": "off", "0": "off"}.get(
                _env("SEARCH_TAGS", "all").lower(), _env("SEARCH_TAGS", "all").lower()
            ),
            near_duplicate=_env_float("SEARCH_NEAR_DUPLICATE", 0.89),
            clip_model=_env("SEARCH_CLIP_MODEL", "openai/clip-vit-base-patch32"),
            adapt=_env("SEARCH_ADAPT", "auto").lower(),
            view_crop=_env_float("SEARCH_VIEW_CROP", 0.8),
            results_per_label=_env_int("SEARCH_RESULTS_PER_LABEL", 0),
            aws_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
            rekognition_max_labels=_env_int("REKOGNITION_MAX_LABELS", 50),
            rekognition_min_confidence=_env_float("REKOGNITION_MIN_CONFIDENCE", 55.0),
            titan_model_id=_env("TITAN_MODEL_ID", "amazon.titan-embed-image-v1"),
            titan_embedding_length=_env_int("TITAN_EMBEDDING_LENGTH", 1024),
            titan_max_concurrency=max(1, _env_int("TITAN_MAX_CONCURRENCY", 8)),
            opensearch_endpoint=_env("OPENSEARCH_ENDPOINT", ""),
            opensearch_index=_env("OPENSEARCH_INDEX", "visual-search"),
            opensearch_auth=_env("OPENSEARCH_AUTH", "auto").lower(),
            opensearch_username=_env("OPENSEARCH_USERNAME", ""),
            opensearch_password=_env("OPENSEARCH_PASSWORD", ""),
            opensearch_hnsw_m=_env_int("OPENSEARCH_HNSW_M", 16),
            opensearch_ef_construction=_env_int("OPENSEARCH_EF_CONSTRUCTION", 128),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        choices = {
            "SEARCH_DETECTOR": (self.detector, {"local", "rekognition", "none"}),
            "SEARCH_EMBEDDER": (self.embedder, {"efficientnet", "clip", "titan"}),
            "SEARCH_INDEX": (self.index, {"local", "opensearch"}),
            "SEARCH_TAGS": (self.tags, {"all", "keywords", "off"}),
            "SEARCH_ADAPT": (self.adapt, {"auto", "off"}),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(sorted(allowed))}")
        if not 0.3 <= self.view_crop <= 1.0:
            raise ConfigError(f"SEARCH_VIEW_CROP must be between 0.3 and 1.0, got {self.view_crop}")
        if self.results_per_label < 0:
            raise ConfigError(
                f"SEARCH_RESULTS_PER_LABEL must be 0 (no cap) or more, got {self.results_per_label}"
            )
        if self.titan_embedding_length not in (256, 384, 1024):
            raise ConfigError("TITAN_EMBEDDING_LENGTH must be 256, 384 or 1024")
        if self.index == "opensearch" and not self.opensearch_endpoint:
            raise ConfigError("SEARCH_INDEX=opensearch needs OPENSEARCH_ENDPOINT")

    def describe(self) -> dict[str, str]:
        """Non-secret settings for logs and the UI."""
        hidden = {"opensearch_password"}
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name not in hidden}
