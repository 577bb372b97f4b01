"""RekognitionDetector against botocore's Stubber (request and response validated against the
real Rekognition service model) with real photos from the shared data.

Not covered (needs the real service): which labels Rekognition actually finds and how good its
boxes are, its latency and quotas, and server-side checks we only mirror (5 MB / 80 px limits,
InvalidImageFormatException for exotic encodings).
"""

from __future__ import annotations

import io

import boto3
import pytest
from botocore.stub import Stubber
from helpers import SCENES, Capture
from PIL import Image

from search_core.aws.rekognition import RekognitionDetector, parse_labels
from search_core.config import Settings
from search_core.errors import BackendError
from search_core.images import load_image

pytestmark = pytest.mark.usefixtures("fake_aws")


@pytest.fixture(autouse=True)
def _region(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")


SETTINGS = Settings(aws_region="eu-west-1", rekognition_max_labels=20,
                    rekognition_min_confidence=60.0)

LABELS = [
    {
        "Name": "Dog",
        "Confidence": 97.0,
        "Instances": [
            {"BoundingBox": {"Width": 0.5, "Height": 0.6, "Left": -0.02, "Top": 0.3},
             "Confidence": 96.5},
            {"BoundingBox": {"Width": 0.3, "Height": 0.2, "Left": 0.8, "Top": 0.9},
             "Confidence": 62.0},
        ],
        "Parents": [{"Name": "Animal"}, {"Name": "Mammal"}, {"Name": "Pet"}],
        "Categories": [{"Name": "Animals and Pets"}],
    },
    {"Name": "Grass", "Confidence": 90.0, "Instances": [], "Parents": [{"Name": "Plant"}]},
    {
        "Name": "Bicycle",
        "Confidence": 99.0,
        "Instances": [
            {"BoundingBox": {"Width": 0.4, "Height": 0.5, "Left": 0.1, "Top": 0.1},
             "Confidence": 98.9},
            {"BoundingBox": {"Width": 0.1, "Height": 0.1, "Left": 0.1, "Top": 0.1},
             "Confidence": 40.0},
        ],
        "Parents": [{"Name": "Vehicle"}, {"Name": "Transportation"}],
        "Categories": [{"Name": "Vehicles and Automotive"}],
    },
]


def _detector() -> tuple[RekognitionDetector, Stubber]:
    client = boto3.client("rekognition", region_name="eu-west-1")
    return RekognitionDetector(SETTINGS, client=client), Stubber(client)


def _scene(name: str) -> Image.Image:
    path = SCENES / name
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    return load_image(path.read_bytes())


def test_detect_labels_request_and_parsing() -> None:
    image = _scene("darknet_dog.jpg")
    detector, stubber = _detector()
    sent = Capture()
    stubber.add_response(
        "detect_labels",
        {"Labels": LABELS, "LabelModelVersion": "3.0"},
        {"Image": {"Bytes": sent}, "MaxLabels": 20, "MinConfidence": 60.0},
    )
    with stubber:
        detections = detector.detect(image)
    stubber.assert_no_pending_responses()

    payload = sent.value
    assert isinstance(payload, bytes) and len(payload) <= 5 * 1024 * 1024
    decoded = Image.open(io.BytesIO(payload))
    assert decoded.format == "JPEG" and decoded.size == image.size

    # Grass has no instances; the 40 % bicycle instance is below MinConfidence.
    assert [(d.label, d.confidence) for d in detections] == [
        ("Bicycle", 98.9), ("Dog", 96.5), ("Dog", 62.0)
    ]
    assert all(d.model == "rekognition" for d in detections)
    dog = detections[1]
    assert dog.parents == ("Animal", "Mammal", "Pet")
    assert dog.categories == ("Animals and Pets",)
    assert dog.box.left == 0.0 and dog.box.width == pytest.approx(0.48)
    corner = detections[2].box  # 0.8 + 0.3 and 0.9 + 0.2 exceed 1
    assert corner.left + corner.width == pytest.approx(1.0)
    assert corner.top + corner.height == pytest.approx(1.0)


def test_exif_rotated_photo_is_sent_in_the_oriented_frame() -> None:
    """The sample sent the raw file: boxes came back in the sensor frame and crops were wrong."""
    base = _scene("darknet_kite.jpg")  # 1352 x 900 landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    base.save(buffer, format="JPEG", exif=exif.tobytes())
    oriented = load_image(buffer.getvalue())
    assert oriented.size == (base.height, base.width)  # portrait after EXIF orientation

    detector, stubber = _detector()
    sent = Capture()
    stubber.add_response("detect_labels", {"Labels": []},
                         {"Image": {"Bytes": sent}, "MaxLabels": 20, "MinConfidence": 60.0})
    with stubber:
        assert detector.detect(oriented) == []
    decoded = Image.open(io.BytesIO(sent.value))
    assert decoded.size == oriented.size
    assert decoded.getexif().get(0x0112) in (None, 1)


def test_tiny_and_rgba_images_are_made_acceptable() -> None:
    tiny = Image.new("RGBA", (40, 25), (255, 0, 0, 128))
    detector, stubber = _detector()
    sent = Capture()
    stubber.add_response("detect_labels", {"Labels": []},
                         {"Image": {"Bytes": sent}, "MaxLabels": 20, "MinConfidence": 60.0})
    with stubber:
        detector.detect(tiny)
    decoded = Image.open(io.BytesIO(sent.value))
    assert decoded.mode == "RGB" and min(decoded.size) >= 80


def test_huge_image_is_downscaled_under_limits() -> None:
    image = _scene("darknet_kite.jpg").resize((6000, 4000))
    detector = RekognitionDetector(SETTINGS, client=object())
    payload = detector.request_bytes(image)
    decoded = Image.open(io.BytesIO(payload))
    assert len(payload) <= 5 * 1024 * 1024 and max(decoded.size) <= 2048


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDeniedException", "denied in eu-west-1"),
        ("ThrottlingException", "throttled"),
        ("ProvisionedThroughputExceededException", "throttled"),
        ("ExpiredTokenException", "expired"),
        ("InvalidImageFormatException", "refused"),
    ],
)
def test_errors_become_backend_errors(code: str, expected: str) -> None:
    detector, stubber = _detector()
    stubber.add_client_error("detect_labels", service_error_code=code, service_message="nope",
                             http_status_code=400)
    with stubber, pytest.raises(BackendError, match=expected):
        detector.detect(Image.new("RGB", (200, 200)))


def test_parse_labels_drops_degenerate_boxes() -> None:
    labels = [{"Name": "Cup", "Confidence": 90.0, "Instances": [
        {"BoundingBox": {"Width": 0.2, "Height": 0.2, "Left": 1.2, "Top": 0.1}, "Confidence": 90.0}
    ]}]
    assert parse_labels(labels) == []
