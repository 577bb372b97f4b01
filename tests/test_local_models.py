"""The committed ONNX models on real photos: embedder behaviour, detectors, checksum guard."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import GROCERY, SCENES
from PIL import Image

from search_core.config import MODELS_DIR, Settings
from search_core.errors import ConfigError, ImageError, NotSupportedError
from search_core.factory import build_detector
from search_core.interfaces import Detector, Embedder
from search_core.models.base import verify_model_file
from search_core.models.detectors import MergedDetector, canonical
from search_core.models.efficientnet import EfficientNetEmbedder, preprocess
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


@pytest.fixture(scope="module")
def embedder() -> EfficientNetEmbedder:
    return EfficientNetEmbedder(MODELS_DIR, threads=2, batch_size=4)


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
    assert (embedder.model_id, embedder.dimension, embedder.supports_text) == (
        "efficientnet-lite0-c80",  # the 80 % view (SEARCH_VIEW_CROP) is part of the id
        1280,
        False,
    )
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
    assert vectors.shape == (1, 1280)
    assert "banana" in keywords[0][0][0].lower()
    assert 0.0 < keywords[0][0][1] <= 1.0


@needs_data
def test_vectors_are_unit_length_and_batch_equals_single(
    embedder: EfficientNetEmbedder,
) -> None:
    images = [scene(n) for n in ("grocery_Banana.jpg", "darknet_dog.jpg", "grocery_Lemon.jpg")]
    images += [scene("darknet_person.jpg"), scene("grocery_Pink-Lady.jpg")]  # > batch_size
    batch = embedder.embed_images(images)
    assert batch.shape == (5, 1280) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, image in enumerate(images):
        single = embedder.embed_query(image=image)
        assert single.shape == (1280,)
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
    assert embedder.embed_images([]).shape == (0, 1280)


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


def test_committed_files_match_checksums() -> None:
    sums = (MODELS_DIR / "SHA256SUMS").read_text().split()
    names = sums[1::2]
    assert {"efficientnet_lite0.onnx", "nanodet.onnx", "ssd_mobilenetv2_oidv4.onnx"} <= set(names)
    for name in names:
        assert verify_model_file(MODELS_DIR, name).exists()  # raises on a mismatch
