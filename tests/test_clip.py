"""The CLIP embedder's real transformers code path, on a small randomly initialised model.

Real CLIP weights must be downloaded from the Hugging Face hub, which is not reachable here; the
test saves a tiny random ``CLIPModel`` (and a tiny BPE tokenizer) to a folder and loads it with
the same ``from_pretrained`` calls a hub id goes through. Not covered: the hub download itself and
the retrieval quality of real CLIP weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from search_core.errors import BackendError  # noqa: E402
from search_core.models.clip import ClipEmbedder  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = tmp_path_factory.mktemp("tiny-clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


def _photo(color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (64, 48), color)
    image.paste((255 - color[0], 40, 90), (10, 10, 40, 30))
    return image


def test_images_text_and_both_give_unit_vectors(tiny_clip: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip), batch_size=2)
    assert embedder.dimension == 24
    images = [_photo((200, 10, 10)), _photo((10, 200, 10)), _photo((10, 10, 200))]
    vectors = embedder.embed_images(images)
    assert vectors.shape == (3, 24)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # batching must not change a vector
    assert np.allclose(embedder.embed_images(images[2:])[0], vectors[2], atol=1e-5)
    text = embedder.embed_query(text="red shoe")
    both = embedder.embed_query(image=images[0], text="red shoe")
    assert text.shape == both.shape == (24,)
    expected = (vectors[0] + text) / np.linalg.norm(vectors[0] + text)
    assert np.allclose(both, expected, atol=1e-5)


def test_missing_model_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = ClipEmbedder(str(tmp_path / "no-such-model"))
    with pytest.raises(BackendError, match="cannot load CLIP model"):
        embedder.load()
