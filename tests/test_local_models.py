"""The committed ONNX models on real photos: embedder behaviour, detectors, checksum guard."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import GROCERY, SCENES
from PIL import Image

from search_core.config import MODELS_DIR, Settings
from search_core.errors import ConfigError, ImageError, NotSupportedError
from search_core.factory import build_detector, build_embedder
from search_core.interfaces import Detector, Embedder
from search_core.models.base import verify_model_file
from search_core.models.detectors import MergedDetector, canonical
from search_core.models.efficientnet import (
    EfficientNetEmbedder,
    EfficientNetPairEmbedder,
    preprocess,
)
from search_core.models.nanodet import NanoDetDetector
from search_core.models.objectron_ssd import ObjectronSsdDetector, anchors
from search_core.types import Box, Detection

needs_data = pytest.mark.skipif(
    not SCENES.is_dir(), reason=f"shared test images not found at {SCENES}"
)


def scene(name: str) -> Image.Image:
    return Image.open(SCENES / name).convert("RGB")


def grocery_images(folder: str, count: int) -> list[Image.Image]:
    paths = sorted((GROCERY / "train" / folder).glob("*.jpg"))[:count]
    if len(paths) < count:
        pytest.skip(f"GroceryStore images missing under {GROCERY / 'train' / folder}")
    return [Image.open(p).convert("RGB") for p in paths]


def local_embedder(name: str, **overrides: Any) -> EfficientNetEmbedder:
    """The embedder ``SEARCH_EMBEDDER=name`` builds (through the factory, as the app does)."""
    settings = Settings(models_dir=MODELS_DIR, onnx_threads=2, batch_size=4, embedder=name,
                        **overrides)
    built = build_embedder(settings)
    assert isinstance(built, EfficientNetEmbedder)
    return built


#: SEARCH_EMBEDDER -> (model id at the default 80 % view, dimension)
OFFLINE_EMBEDDERS = {
    "efficientnet": ("efficientnet-lite0-lite2-c80-sqrt", 2560),  # the default
    "efficientnet-lite0": ("efficientnet-lite0-c80-sqrt", 1280),  # the fast option
}


@pytest.fixture(scope="module", params=sorted(OFFLINE_EMBEDDERS))
def embedder(request: pytest.FixtureRequest) -> EfficientNetEmbedder:
    """Each offline embedder in turn: the behaviour below holds for both."""
    return local_embedder(request.param)


@pytest.fixture(scope="module")
def pair() -> EfficientNetEmbedder:
    """The default embedder, built from default settings."""
    return local_embedder(Settings().embedder)


@pytest.fixture(scope="module")
def detector() -> MergedDetector:
    detector = build_detector(Settings(models_dir=MODELS_DIR, onnx_threads=2))
    assert isinstance(detector, MergedDetector)
    return detector


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


# ------------------------------------------------------------------ EfficientNet


def test_embedder_meets_protocol(embedder: EfficientNetEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    name = next(k for k, (model_id, _) in OFFLINE_EMBEDDERS.items()
                if model_id == embedder.model_id)
    # the networks, the 80 % view (SEARCH_VIEW_CROP) and the power normalisation are in the id
    assert (embedder.dimension, embedder.supports_text) == (OFFLINE_EMBEDDERS[name][1], False)
    assert len(embedder.labels) == 1000


def test_preprocess_shape_and_range() -> None:
    batch = preprocess([Image.new("RGB", (640, 300), (255, 0, 127)), Image.new("L", (50, 90))])
    # uint8 pixels: the ONNX graph applies (x - 127) / 128 itself
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.uint8
    assert batch[0, :, 100, 100].tolist() == [255, 0, 127]
    assert (batch[1] == 0).all()


@needs_data
def test_banana_photo_is_classified_as_banana(embedder: EfficientNetEmbedder) -> None:
    vectors, keywords = embedder.embed_with_keywords([scene("grocery_Banana.jpg")])
    assert vectors.shape == (1, embedder.dimension)
    assert "banana" in keywords[0][0][0].lower()
    assert 0.0 < keywords[0][0][1] <= 1.0


@needs_data
def test_vectors_are_unit_length_and_batch_equals_single(
    embedder: EfficientNetEmbedder,
) -> None:
    images = [scene(n) for n in ("grocery_Banana.jpg", "darknet_dog.jpg", "grocery_Lemon.jpg")]
    images += [scene("darknet_person.jpg"), scene("grocery_Pink-Lady.jpg")]  # > batch_size
    batch = embedder.embed_images(images)
    assert batch.shape == (5, embedder.dimension) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, image in enumerate(images):
        single = embedder.embed_query(image=image)
        assert single.shape == (embedder.dimension,)
        assert np.allclose(single, batch[i], atol=1e-4)


@needs_data
def test_same_class_groceries_are_closer_than_other_classes(
    embedder: EfficientNetEmbedder,
) -> None:
    bananas = embedder.embed_images(grocery_images("Fruit/Banana", 3))
    milks = embedder.embed_images(grocery_images("Packages/Milk/Arla-Standard-Milk", 3))
    same = [cosine(bananas[0], bananas[1]), cosine(milks[0], milks[1])]
    different = [cosine(bananas[i], milks[j]) for i in range(3) for j in range(3)]
    assert min(same) > max(different)


def test_text_query_is_refused_clearly(embedder: EfficientNetEmbedder) -> None:
    with pytest.raises(NotSupportedError, match="images only"):
        embedder.embed_query(text="red shoes")
    with pytest.raises(ImageError):
        embedder.embed_query()


def test_empty_input_gives_empty_matrix(embedder: EfficientNetEmbedder) -> None:
    assert embedder.embed_images([]).shape == (0, embedder.dimension)


# ------------------------------------------------ the default pair (Lite0 + Lite2) in detail


def test_default_is_the_pair_and_lite0_alone_is_the_fast_option() -> None:
    default, fast = local_embedder(Settings().embedder), local_embedder("efficientnet-lite0")
    assert type(default) is EfficientNetPairEmbedder and type(fast) is EfficientNetEmbedder
    assert (default.dimension, fast.dimension) == (2560, 1280)
    assert (default.filename, fast.filename) == (
        "efficientnet_lite0_lite2.onnx", "efficientnet_lite0.onnx")
    # Vectors of different networks, views or normalisations must never share an index: each
    # id names all three (and an index of the old un-normalised vectors is re-indexed).
    for crop in (0.7, 0.8, 0.875):
        ids = [local_embedder(name, view_crop=crop).model_id for name in OFFLINE_EMBEDDERS]
        assert len(set(ids)) == 2
        for model_id in ids:
            assert f"-c{round(crop * 100)}-" in model_id and model_id.endswith("-sqrt")
        assert "efficientnet-lite0" not in ids and "efficientnet-lite0-c80" not in ids


@needs_data
def test_pair_vectors_are_two_power_normalised_halves(pair: EfficientNetEmbedder) -> None:
    names = ("grocery_Granny-Smith.jpg", "darknet_dog.jpg", "grocery_Arla-Standard-Milk.jpg",
             "grocery_Banana.jpg", "darknet_person.jpg")  # more than one batch (batch_size 4)
    images = [scene(n) for n in names]
    vectors = pair.embed_images(images)
    assert vectors.shape == (5, 2560) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the graph's raw pooled activations, to check each half against
    raw = pair.session.run(["features_lite0", "features_lite2"], {"input": pair.preprocess(images)})
    for half, activations in zip((vectors[:, :1280], vectors[:, 1280:]), raw, strict=True):
        # each network weighs the same: half of the unit length each (1/sqrt(2) long) ...
        assert np.allclose(np.linalg.norm(half, axis=1), 1 / np.sqrt(2), atol=1e-5)
        assert (half >= 0).all()
        # ... and each half is the square root of the activations: its squares are
        # proportional to them (plain L2 normalisation would make the half itself proportional)
        shares = activations / activations.sum(axis=1, keepdims=True)
        assert np.allclose(2 * half.astype(np.float64) ** 2, shares, atol=1e-6)
    # the first half is Lite0's view (resized inside the graph): close to Lite0 alone
    alone = local_embedder("efficientnet-lite0").embed_images(images)
    assert (np.sum(vectors[:, :1280] * np.sqrt(2) * alone, axis=1) > 0.9).all()


@needs_data
def test_pair_keywords_are_the_ensembles_imagenet_labels(pair: EfficientNetEmbedder) -> None:
    image = scene("grocery_Granny-Smith.jpg")
    _, keywords = pair.embed_with_keywords([image], top_k=5, min_probability=0.0)
    labels = keywords[0]
    assert len(labels) == 5 and labels[0][0] == "Granny Smith"
    assert {name for name, _ in labels} <= set(pair.labels)
    probabilities = [p for _, p in labels]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-6
    # the logits are log mean probabilities: they are already a distribution
    _, logits = pair.forward(pair.preprocess([image]))
    assert (logits <= 1e-6).all() and np.isclose(np.exp(logits).sum(), 1.0, atol=1e-4)


@needs_data
def test_pair_puts_the_same_product_nearer_than_another(pair: EfficientNetEmbedder) -> None:
    apples = pair.embed_images(grocery_images("Fruit/Apple/Granny-Smith", 2))
    milk = pair.embed_images(grocery_images("Packages/Milk/Arla-Standard-Milk", 1))[0]
    assert cosine(apples[0], apples[1]) > max(cosine(apples[0], milk), cosine(apples[1], milk))


# ------------------------------------------------------------------ detectors


def test_ssd_anchor_count() -> None:
    assert anchors().shape == (1917, 4)


def test_label_mapping_unifies_both_models() -> None:
    assert canonical("person") == canonical("Person")
    assert canonical("cup")[1] == canonical("Coffee cup")[1] == canonical("Mug")[1]
    assert canonical("dining table")[0] == "Table"
    assert canonical("teddy bear") == ("Teddy Bear", "teddy bear")


def boxes_of(detections: list[Detection], label: str) -> list[Box]:
    return [d.box for d in detections if d.label == label]


def centre(box: Box) -> tuple[float, float]:
    return box.left + box.width / 2, box.top + box.height / 2


@needs_data
def test_dog_scene(detector: MergedDetector) -> None:
    assert isinstance(detector, Detector)
    found = detector.detect(scene("darknet_dog.jpg"))
    labels = [d.label for d in found]
    assert {"Dog", "Bicycle"} <= set(labels)
    assert {"Car", "Truck", "Vehicle"} & set(labels)
    # The dog sits in the lower left, the bicycle across the middle, the vehicle top right.
    dog_x, dog_y = centre(boxes_of(found, "Dog")[0])
    assert dog_x < 0.45 and dog_y > 0.5
    bike_x, bike_y = centre(boxes_of(found, "Bicycle")[0])
    assert 0.25 < bike_x < 0.65 and 0.3 < bike_y < 0.7
    vehicle = next(d for d in found if d.label in {"Car", "Truck", "Vehicle"})
    assert centre(vehicle.box)[0] > 0.6 and centre(vehicle.box)[1] < 0.35
    confidences = [d.confidence for d in found]
    assert confidences == sorted(confidences, reverse=True)
    for d in found:
        assert d.model in {"objectron-ssd", "nanodet"}
        assert 35.0 <= d.confidence <= 100.0
        b = d.box
        assert 0 <= b.left <= 1 and 0 <= b.top <= 1
        assert b.left + b.width <= 1 + 1e-6 and b.top + b.height <= 1 + 1e-6


@needs_data
def test_person_scene(detector: MergedDetector) -> None:
    found = detector.detect(scene("darknet_person.jpg"))
    people = boxes_of(found, "Person")
    assert len(people) == 1  # seen by both models, reported once
    assert people[0].height > 0.4


@needs_data
def test_each_model_alone_and_label_conventions() -> None:
    image = scene("darknet_dog.jpg")
    ssd = ObjectronSsdDetector(MODELS_DIR, threads=2).detect(image)
    nano = NanoDetDetector(MODELS_DIR, threads=2).detect(image)
    assert "Dog" in {d.label for d in ssd}  # Open Images names are already capitalised
    assert "bicycle" in {d.label for d in nano}  # COCO names are lower case before merging
    assert all(d.model == "objectron-ssd" for d in ssd)


def test_plain_images_have_no_objects(detector: MergedDetector) -> None:
    for colour in ((0, 0, 0), (255, 255, 255), (128, 128, 128)):
        assert detector.detect(Image.new("RGB", (640, 480), colour)) == []


def test_instances_are_capped() -> None:
    many = [
        Detection("person", 90.0 - i, Box(i / 40, 0.0, 0.02, 0.5), model="nanodet")
        for i in range(35)
    ]
    merged = MergedDetector([], min_confidence=35.0, max_instances=20).merge(many)
    assert len(merged) == 20 and merged[0].label == "Person"


def test_cross_model_duplicates_are_merged() -> None:
    box = Box(0.1, 0.1, 0.5, 0.5)
    merged = MergedDetector([], min_confidence=30.0).merge(
        [
            Detection("Coffee cup", 60.0, box, model="objectron-ssd"),
            Detection("cup", 70.0, Box(0.12, 0.1, 0.5, 0.5), model="nanodet"),
            Detection("bottle", 20.0, box, model="nanodet"),  # below min confidence
        ]
    )
    assert [(d.label, d.model) for d in merged] == [("Cup", "nanodet")]


# ------------------------------------------------------------------ checksums


def test_checksum_mismatch_is_a_clear_config_error(tmp_path: Path) -> None:
    shutil.copy(MODELS_DIR / "ssd_oidv4_labels.txt", tmp_path)
    shutil.copy(MODELS_DIR / "ssd_mobilenetv2_oidv4.onnx", tmp_path)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  ssd_mobilenetv2_oidv4.onnx\n")
    with pytest.raises(ConfigError, match=r"does not match models/SHA256SUMS"):
        ObjectronSsdDetector(tmp_path).load()


def test_missing_model_file_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"build_models\.py"):
        EfficientNetEmbedder(tmp_path).embed_images([Image.new("RGB", (64, 64))])


def build_models_module() -> Any:
    """``tools/build_models.py`` imported as a module (it is a script, not a package)."""
    path = MODELS_DIR.parent / "tools" / "build_models.py"
    spec = importlib.util.spec_from_file_location("build_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_match_checksums() -> None:
    sums = (MODELS_DIR / "SHA256SUMS").read_text().split()
    names = sums[1::2]
    embedders = {local_embedder(name).filename for name in OFFLINE_EMBEDDERS}
    assert embedders == {"efficientnet_lite0.onnx", "efficientnet_lite0_lite2.onnx"}
    assert embedders | {"nanodet.onnx", "ssd_mobilenetv2_oidv4.onnx"} <= set(names)
    # and build_models.py rebuilds and records exactly the files listed
    built = {name for files in build_models_module().FILES.values() for name in files}
    assert set(names) == built
    for name in names:
        assert verify_model_file(MODELS_DIR, name).exists()  # raises on a mismatch


def test_build_models_smoke_test_knows_the_pair_file(tmp_path: Path) -> None:
    """The rebuild's I/O check accepts the committed pair file and refuses Lite0's graph under
    the pair's name (it would otherwise pass a wrong export into SHA256SUMS)."""
    tools = build_models_module()
    good, bad = tmp_path / "good", tmp_path / "bad"
    pair_file = "efficientnet_lite0_lite2.onnx"
    good.mkdir(), bad.mkdir()
    (good / pair_file).symlink_to(MODELS_DIR / pair_file)
    tools.smoke_test(good)
    (bad / pair_file).symlink_to(MODELS_DIR / "efficientnet_lite0.onnx")
    with pytest.raises(SystemExit, match=r"efficientnet_lite0_lite2\.onnx: unexpected I/O"):
        tools.smoke_test(bad)
