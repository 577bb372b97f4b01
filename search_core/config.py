"""Every setting in one place, read from environment variables.

Each setting is declared once, as a field of :class:`Settings` built by :func:`setting`: its
variable, default, parser and meaning. From that one declaration come the value
(:meth:`Settings.from_env`), the one-line error for a bad value, :meth:`Settings.describe`, and
the README's configuration table (``python tools/config_table.py``, checked by
``tests/test_docs.py``), so none of them can drift from the others.

Adding a setting is one edit: a field below, e.g.::

    my_limit: int = setting("SEARCH_MY_LIMIT", "10", "What it limits, and why.", parse=_int)

then ``python tools/config_table.py --write``. Nothing else in ``search_core`` reads
``os.environ``: a module that needs a setting takes ``Settings`` (or calls
:meth:`Settings.read` for one variable, where a whole validated snapshot would be too strict,
e.g. the CLI's log level before the configuration is checked).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from search_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"

#: a derived default: computed from the settings declared above it (by field name)
Derived = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class Variable:
    """How one field is read from the environment and shown in the README."""

    name: str
    #: raw text parsed when the variable is unset or blank (or computed from earlier fields)
    default: str | Derived
    doc: str
    parse: Callable[[str], Any]
    #: the README's default column, where the raw default is not what a reader should see
    shown: str | None = None
    #: accepted values (the README lists them in ``doc``)
    choices: tuple[str, ...] = ()
    #: other variables read, in order, when ``name`` is unset (AWS_DEFAULT_REGION ...)
    aliases: tuple[str, ...] = ()
    #: never printed: kept out of repr(), describe() and logs
    secret: bool = False

    def raw(self, env: Mapping[str, str]) -> str | None:
        for name in (self.name, *self.aliases):
            value = env.get(name, "").strip()
            if value:
                return value
        return None

    def value(self, env: Mapping[str, str], earlier: Mapping[str, Any]) -> Any:
        raw = self.raw(env)
        if raw is None:
            raw = self.default(earlier) if callable(self.default) else self.default
        try:
            parsed = self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name} {exc}, got {raw!r}") from exc
        self.check(parsed)
        return parsed

    def check(self, value: Any) -> None:
        if self.choices and value not in self.choices:
            allowed = ", ".join(sorted(c for c in self.choices if c))
            raise ConfigError(f"{self.name}={value!r} is not one of {allowed}")


def setting(
    name: str,
    default: str | Derived,
    doc: str,
    *,
    parse: Callable[[str], Any] = str,
    shown: str | None = None,
    choices: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    secret: bool = False,
    value: Any = MISSING,
) -> Any:
    """A :class:`Settings` field read from the variable ``name``.

    ``default`` is the raw text, parsed like a user's value; ``Settings()`` gets the parsed
    default too, unless ``value`` gives it another one (a derived default has none to parse).
    """
    variable = Variable(name, default, doc, parse, shown, choices, aliases, secret)
    if value is MISSING and not callable(default):
        value = parse(default)
    return field(default=value, repr=not secret, metadata={"variable": variable})


# -- parsers: raise ValueError with the end of a sentence that starts with the variable name --


def _lower(raw: str) -> str:
    return raw.lower()


def _path(raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def _optional_path(raw: str) -> Path | None:
    return None if raw.lower() in {"off", "none", "false", "0"} else _path(raw)


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(_path(p.strip()) for p in raw.split(",") if p.strip())


def _number(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return convert(raw)
        except ValueError:
            raise ValueError(f"must be {what}") from None

    return parse


_int: Callable[[str], int] = _number(int, "an integer")
_float: Callable[[str], float] = _number(float, "a number")


def _positive_int(raw: str) -> int:
    """At least 1: smaller values are taken as 1 (a batch or a pool of 0 means one)."""
    return max(1, _int(raw))


def _price(raw: str) -> float:
    value = _float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _optional_price(raw: str) -> float | None:
    return _price(raw) if raw else None


def _optional_cosine(raw: str) -> float | None:
    """``auto`` (None: the embedder's calibrated value) or a cosine in [0, 1]."""
    if raw.lower() == "auto":
        return None
    value = _number(float, "a number or `auto`")(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1, or `auto`")
    return float(value)


def _megabytes(raw: str) -> int:
    """MiB to bytes."""
    return int(_float(raw) * 1024 * 1024)


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level and not isinstance(logging.getLevelName(level), int):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _root_path(raw: str) -> str:
    return raw.rstrip("/")


def _retry_mode(raw: str) -> str:
    return raw.lower()


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


def _decodes(raw: str) -> int:
    """0 = as many as the memory limit allows."""
    return _int(raw) or decodes_for_memory()


def _non_negative_float(raw: str) -> float:
    return max(0.0, _float(raw))


def _tags(raw: str) -> str:
    """``all`` | ``keywords`` | ``off``; true/false and 1/0 accepted for all/off."""
    lowered = raw.lower()
    return {"true": "all", "1": "all", "false": "off", "0": "off"}.get(lowered, lowered)


def _default_folder_roots(earlier: Mapping[str, Any]) -> str:
    return f"{REPO_ROOT},{REPO_ROOT.parent / 'shared' / 'data'},{earlier['data_dir']}"


@dataclass(frozen=True)
class Settings:
    """Immutable snapshot of the configuration; build it with :meth:`from_env`.

    ``Settings(...)`` with explicit values (tests, benchmarks) skips the environment and the
    validation; the field order is the README table's order.
    """

    # -- local backends ---------------------------------------------------------------------
    data_dir: Path = setting("SEARCH_DATA_DIR", "./data", "Local data directory: the local index and its metadata.", parse=_path, value=Path("./data"))
    detector: str = setting("SEARCH_DETECTOR", "local", "`local` (SSD + NanoDet, ONNX), `rekognition`, or `none`.", parse=_lower, choices=("local", "rekognition", "none"))
    embedder: str = setting("SEARCH_EMBEDDER", "efficientnet", "`efficientnet` (offline default: EfficientNet-Lite0 + Lite2, 2560-d), `efficientnet-lite0` (offline, Lite0 alone: ~3x less compute, 1280-d, lower Recall@1), `clip` (transformers, downloads weights), or `titan` (Bedrock).", parse=_lower, choices=("efficientnet", "efficientnet-lite0", "clip", "titan"))
    index: str = setting("SEARCH_INDEX", "local", "`local` (NumPy exact / FAISS HNSW in SEARCH_DATA_DIR) or `opensearch`.", parse=_lower, choices=("local", "opensearch"))
    models_dir: Path = setting("SEARCH_MODELS_DIR", str(MODELS_DIR), "Folder holding the converted ONNX files and SHA256SUMS.", parse=_path, shown="./models")
    onnx_threads: int = setting("SEARCH_ONNX_THREADS", "0", "ONNX Runtime intra-op threads (0 = one per core).", parse=_int)
    batch_size: int = setting("SEARCH_BATCH_SIZE", "16", "Images per embedding batch while indexing.", parse=_positive_int)
    min_detection_confidence: float = setting("SEARCH_MIN_DETECTION_CONFIDENCE", "35", "Detections below this confidence (percent) are dropped.", parse=_float)
    max_pixels: int = setting("SEARCH_MAX_PIXELS", "50000000", "Decompression-bomb guard: images with more pixels are refused.", parse=_int)
    max_side: int = setting("SEARCH_MAX_SIDE", "2048", "Images are downscaled so their long side is at most this.", parse=_int)
    max_upload_bytes: int = setting("SEARCH_MAX_UPLOAD_MB", "50", "Uploads and source files larger than this are refused.", parse=_megabytes)
    max_decodes: int = setting("SEARCH_MAX_DECODES", "0", "Images decoded at once (each up to ~350 MB at 50 MP); 0 = (memory limit - 800 MB) / 350 MB, 1 to 4.", parse=_decodes, shown="0 (from the memory limit)", value=1)
    temp_max_bytes: int = setting("SEARCH_TEMP_MAX_MB", "500", "Size cap of the web app's temp folder (uploads, Gradio cache, result images); least recently used files are deleted first.", parse=_megabytes)
    login_max_failures: int = setting("SEARCH_LOGIN_MAX_FAILURES", "10", "Failed logins per client or user before a lock-out (slowed down from the 4th).", parse=_positive_int)
    login_lockout_s: float = setting("SEARCH_LOGIN_LOCKOUT_S", "300", "Seconds a locked client or user is refused (HTTP 429).", parse=_non_negative_float)
    folder_roots: tuple[Path, ...] = setting("SEARCH_FOLDER_ROOTS", _default_folder_roots, "Comma-separated roots that folder sources must lie under (no path traversal).", parse=_paths, shown="(repo, ../shared/data, SEARCH_DATA_DIR)", value=())
    hnsw_threshold: int = setting("SEARCH_HNSW_THRESHOLD", "20000", "Local index switches from exact NumPy search to FAISS HNSW above this many vectors.", parse=_int)
    sample_catalogue: Path | None = setting("SEARCH_SAMPLE_CATALOGUE", str(REPO_ROOT / "samples" / "catalogue"), "Indexed in the background at app start when the index is empty, and resumed at the next start if that indexing was interrupted (`off` disables).", parse=_optional_path, shown="./samples/catalogue")
    tags: str = setting("SEARCH_TAGS", "all", "Automatic tags stored at index time: `all` (detector labels + EfficientNet's ImageNet labels; the detector costs ingest speed), `keywords` (ImageNet labels only, free), `off`.", parse=_tags, choices=("all", "keywords", "off"))
    near_duplicate: float | None = setting("SEARCH_NEAR_DUPLICATE", "auto", 'Cosine from which a result folds into a higher one ("+N similar"); `auto`: the value calibrated for the embedder by bench/near_duplicates.py (0.92 for `efficientnet`, 0.89 for `efficientnet-lite0`, 0.92 for embedders not calibrated here); 0 disables.', parse=_optional_cosine, shown="auto")
    clip_model: str = setting("SEARCH_CLIP_MODEL", "openai/clip-vit-base-patch32", "Hugging Face model id for `SEARCH_EMBEDDER=clip`.")
    adapt: str = setting("SEARCH_ADAPT", "auto", "`auto`: learn a projection from the catalogue's folders/labels after each ingest and use it when it wins on held-out catalogue images; `off`: plain embedding.", parse=_lower, choices=("auto", "off"))
    view_crop: float = setting("SEARCH_VIEW_CROP", "0.8", "Centre share of the image the EfficientNet embedder sees (queries and catalogue; changing it needs a re-index).", parse=_float)
    results_per_label: int = setting("SEARCH_RESULTS_PER_LABEL", "0", "At most this many results of one catalogue label (folder = product), so the first page shows more products; `0` = no cap.", parse=_int)
    # -- AWS --------------------------------------------------------------------------------
    aws_region: str = setting("AWS_REGION", "us-east-1", "Region for Rekognition, Bedrock, S3 and OpenSearch Serverless.", aliases=("AWS_DEFAULT_REGION",))
    rekognition_max_labels: int = setting("REKOGNITION_MAX_LABELS", "50", "DetectLabels MaxLabels.", parse=_int)
    rekognition_min_confidence: float = setting("REKOGNITION_MIN_CONFIDENCE", "55", "DetectLabels MinConfidence (percent).", parse=_float)
    titan_model_id: str = setting("TITAN_MODEL_ID", "amazon.titan-embed-image-v1", "Bedrock model id of Titan Multimodal Embeddings.")
    titan_embedding_length: int = setting("TITAN_EMBEDDING_LENGTH", "1024", "Titan outputEmbeddingLength: 256, 384 or 1024.", parse=_int)
    titan_max_concurrency: int = setting("TITAN_MAX_CONCURRENCY", "8", "Parallel Bedrock calls while indexing.", parse=_positive_int)
    aws_retry_mode: str = setting("AWS_RETRY_MODE", "", "botocore retry mode for every AWS client; by default Bedrock's bulk calls use `standard` (see search_core/aws/clients.py).", parse=_retry_mode, shown="(adaptive; standard for Bedrock)", choices=("", "standard", "legacy", "adaptive"))
    aws_max_attempts: int = setting("AWS_MAX_ATTEMPTS", "8", "Total attempts per AWS call, first try included.", parse=_positive_int)
    opensearch_endpoint: str = setting("OPENSEARCH_ENDPOINT", "", "OpenSearch URL, e.g. https://xxxx.us-east-1.aoss.amazonaws.com.")
    opensearch_index: str = setting("OPENSEARCH_INDEX", "visual-search", "Index name.")
    opensearch_auth: str = setting("OPENSEARCH_AUTH", "auto", "`sigv4-aoss`, `sigv4-es`, `basic`, `none`, or `auto` (from the endpoint host).", parse=_lower)
    opensearch_username: str = setting("OPENSEARCH_USERNAME", "", "Basic-auth user for self-hosted OpenSearch.")
    opensearch_password: str = setting("OPENSEARCH_PASSWORD", "", "Basic-auth password for self-hosted OpenSearch.", secret=True)
    opensearch_hnsw_m: int = setting("OPENSEARCH_HNSW_M", "16", "HNSW `m` of the knn_vector field.", parse=_int)
    opensearch_ef_construction: int = setting("OPENSEARCH_EF_CONSTRUCTION", "128", "HNSW `ef_construction`.", parse=_int)
    # -- serving and the command line -------------------------------------------------------
    host: str = setting("HOST", "127.0.0.1", "Interface the web app listens on.", shown="127.0.0.1 (0.0.0.0 in the container)")
    port: int = setting("PORT", "7860", "Port of the web app (8080 on App Runner).", parse=_int)
    share: bool = setting("GRADIO_SHARE", "false", "Create a public share link (needs internet and auth; expires after 72 h).", parse=_bool)
    share_server_address: str = setting("GRADIO_SHARE_SERVER_ADDRESS", "", "`host:port` of a self-hosted share (frp) server instead of Gradio's.")
    share_server_tls_certificate: str = setting("GRADIO_SHARE_SERVER_TLS_CERTIFICATE", "", "TLS certificate file of that share server.")
    auth: str = setting("SEARCH_AUTH", "", "`user:password` for basic authentication of the web app.", secret=True)
    auth_file: str = setting("SEARCH_AUTH_FILE", "", "File holding `user:password` lines (alternative to SEARCH_AUTH).")
    gradio_temp_dir: str = setting("GRADIO_TEMP_DIR", "", "Gradio's upload and cache folder (read by Gradio too); file inputs are only accepted from there.", shown="<system temp>/gradio")
    root_path: str = setting("SEARCH_ROOT_PATH", "", "Root path when served behind a proxy under a sub-path.", parse=_root_path)
    concurrency_limit: int = setting("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "0", "Searches run at once per event (0 = one per core, at most 4); more users wait in the queue.", parse=_int)
    log_level: str = setting("LOG_LEVEL", "", "Log level of the web app and the CLI (`DEBUG`, `INFO`, `WARNING`, ...).", parse=_log_level, shown="INFO (app), WARNING (CLI)")
    progress: bool = setting("SEARCH_PROGRESS", "false", "Show the CLI's progress bar even when stderr is not a terminal.", parse=_bool)
    debug: bool = setting("SEARCH_DEBUG", "false", "The CLI shows the traceback of an unexpected error instead of one line.", parse=_bool)
    # -- cost estimate (search_core/costs.py; AWS on-demand prices, us-east-1) --------------
    price_titan_image: float = setting("SEARCH_PRICE_TITAN_IMAGE", "0.00006", "USD per image embedded by Titan Multimodal G1.", parse=_price)
    price_aoss_ocu_hour: float = setting("SEARCH_PRICE_AOSS_OCU_HOUR", "0.24", "USD per OpenSearch Serverless OCU-hour.", parse=_price)
    price_aoss_storage_gb_month: float = setting("SEARCH_PRICE_AOSS_STORAGE_GB_MONTH", "0.024", "USD per GB-month of AOSS storage.", parse=_price)
    cost_aoss_indexing_ocus: float = setting("SEARCH_COST_AOSS_INDEXING_OCUS", "2", "Indexing OCUs assumed busy during the job.", parse=_price)
    cost_images_per_s: float | None = setting("SEARCH_COST_IMAGES_PER_S", "", "Assumed ingest speed (default: Titan concurrency x 4/s).", parse=_optional_price)

    @classmethod
    def variables(cls) -> list[tuple[str, Variable]]:
        """(field name, declaration) of every setting, in README order."""
        return [(f.name, f.metadata["variable"]) for f in fields(cls) if "variable" in f.metadata]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every setting from ``env`` (default: the process environment), validated; a bad
        value raises ConfigError naming its variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, variable in cls.variables():
            values[name] = variable.value(env, values)
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def read(cls, name: str, env: Mapping[str, str] | None = None) -> Any:
        """One setting (by field name) from ``env``, without reading or validating the others.
        For settings needed before, or apart from, a whole snapshot: the CLI's log level, the
        server's address and credentials."""
        variable = dict(cls.variables())[name]
        if callable(variable.default):
            raise ValueError(f"{name} has a derived default: use from_env()")
        return variable.value(os.environ if env is None else env, {})

    def validate(self) -> None:
        """Rules between settings (one variable's own rules are checked while parsing)."""
        for name, variable in self.variables():
            variable.check(getattr(self, name))
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
        return {
            name: str(getattr(self, name))
            for name, variable in self.variables()
            if not variable.secret
        }


#: SEARCH_DETECTOR / SEARCH_EMBEDDER / SEARCH_INDEX choices by field name (the factory's tables
#: must offer exactly these: tests/test_interfaces.py)
CHOICES: dict[str, frozenset[str]] = {
    name: frozenset(variable.choices)
    for name, variable in Settings.variables()
    if name in ("detector", "embedder", "index")
}

#: (variable, default, meaning) of every setting: the README table is rendered from this list.
SETTINGS_DOC: list[tuple[str, str, str]] = [
    (v.name, v.shown if v.shown is not None else str(v.default), v.doc)
    for _, v in Settings.variables()
]
