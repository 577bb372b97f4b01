"""Settings come from one declaration per variable: defaults, parsing, errors, secrets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from search_core.config import REPO_ROOT, Settings
from search_core.errors import ConfigError


def test_defaults_match_a_bare_settings() -> None:
    """An empty environment gives what ``Settings()`` gives (paths resolved; the decode budget
    is sized from the memory limit, ``Settings()`` keeps 1)."""
    from_env = Settings.from_env({})
    bare = Settings()
    for name, _ in Settings.variables():
        if name not in ("data_dir", "folder_roots", "max_decodes"):
            assert getattr(from_env, name) == getattr(bare, name), name
    assert from_env.data_dir == Path("./data").resolve()
    assert 1 <= from_env.max_decodes <= 4


def test_blank_is_unset_and_values_are_parsed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SEARCH_DATA_DIR": str(tmp_path),
            "SEARCH_DETECTOR": " NONE ",
            "SEARCH_BATCH_SIZE": "0",
            "SEARCH_MAX_UPLOAD_MB": "1.5",
            "SEARCH_SAMPLE_CATALOGUE": "off",
            "SEARCH_ROOT_PATH": "/shop/",
            "GRADIO_SHARE": "yes",
            "SEARCH_HNSW_THRESHOLD": "   ",
            "SEARCH_COST_IMAGES_PER_S": "12.5",
        }
    )
    assert settings.detector == "none"
    assert settings.batch_size == 1  # at least one
    assert settings.max_upload_bytes == int(1.5 * 2**20)
    assert settings.sample_catalogue is None
    assert settings.root_path == "/shop"
    assert settings.share is True
    assert settings.hnsw_threshold == 20_000
    assert settings.cost_images_per_s == 12.5
    # the folder roots default is derived from the data directory read before it
    assert settings.folder_roots == (REPO_ROOT, REPO_ROOT.parent / "shared" / "data", tmp_path)


def test_region_falls_back_to_aws_default_region() -> None:
    assert Settings.from_env({"AWS_DEFAULT_REGION": "eu-west-1"}).aws_region == "eu-west-1"
    both = {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert Settings.from_env(both).aws_region == "us-west-2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEARCH_MAX_SIDE": "big"}, "SEARCH_MAX_SIDE must be an integer, got 'big'"),
        ({"SEARCH_PRICE_TITAN_IMAGE": "-1"}, "SEARCH_PRICE_TITAN_IMAGE must not be negative"),
        ({"SEARCH_INDEX": "faiss"}, "SEARCH_INDEX='faiss' is not one of local, opensearch"),
        ({"TITAN_EMBEDDING_LENGTH": "512"}, "TITAN_EMBEDDING_LENGTH must be 256, 384 or 1024"),
        ({"SEARCH_INDEX": "opensearch"}, "SEARCH_INDEX=opensearch needs OPENSEARCH_ENDPOINT"),
        ({"AWS_RETRY_MODE": "fast"}, "AWS_RETRY_MODE='fast' is not one of adaptive, legacy"),
        ({"SEARCH_NEAR_DUPLICATE": "92"}, "SEARCH_NEAR_DUPLICATE must be between 0 and 1"),
        ({"SEARCH_NEAR_DUPLICATE": "high"}, "SEARCH_NEAR_DUPLICATE must be a number or `auto`"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert message in str(raised.value)


def test_read_one_setting_without_the_others() -> None:
    """The server reads PORT even when an unrelated setting is wrong."""
    env = {"PORT": "8080", "SEARCH_MAX_SIDE": "big"}
    assert Settings.read("port", env) == 8080
    assert Settings.read("host", env) == "127.0.0.1"
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr_and_describe() -> None:
    settings = Settings.from_env({"SEARCH_AUTH": "ann:s3cret", "OPENSEARCH_PASSWORD": "hunter2"})
    assert settings.auth == "ann:s3cret" and settings.opensearch_password == "hunter2"
    shown = f"{settings!r} {settings.describe()}"
    assert "s3cret" not in shown and "hunter2" not in shown


@pytest.mark.parametrize(
    ("env", "threshold"),
    [
        ({}, 0.92),  # the default pair, as calibrated by bench/near_duplicates.py
        ({"SEARCH_EMBEDDER": "efficientnet-lite0"}, 0.89),  # its own value, not the pair's
        ({"SEARCH_EMBEDDER": "efficientnet-lite0", "SEARCH_NEAR_DUPLICATE": "0.95"}, 0.95),
        ({"SEARCH_NEAR_DUPLICATE": "0"}, 0.0),  # off
        ({"SEARCH_EMBEDDER": "efficientnet-lite0", "SEARCH_NEAR_DUPLICATE": "AUTO"}, 0.89),
    ],
)
def test_near_duplicate_auto_follows_the_embedder(
    env: dict[str, str], threshold: float, tmp_path: Path
) -> None:
    """A user who switches to the fast embedder gets the cosine measured for it: the pair's
    0.92 would leave Lite0's edited copies unfolded. Nothing is loaded to know it."""
    from search_core.factory import build_pipeline
    from search_core.pipeline import UNCALIBRATED_NEAR_DUPLICATE

    settings = Settings.from_env(
        {"SEARCH_DATA_DIR": str(tmp_path), "SEARCH_SAMPLE_CATALOGUE": "off", **env}
    )
    pipeline = build_pipeline(settings)
    assert pipeline.near_duplicate_threshold == threshold
    if settings.near_duplicate is None:  # an embedder measured nowhere here (CLIP, Titan)
        pipeline.embedder = SimpleNamespace(model_id="uncalibrated")  # type: ignore[assignment]
        assert pipeline.near_duplicate_threshold == UNCALIBRATED_NEAR_DUPLICATE == 0.92
