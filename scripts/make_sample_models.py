#!/usr/bin/env python
"""Build mxserve's sample models, deterministically, as MMS 0.4 compatible archives.

    python scripts/make_sample_models.py --out sample-models [--only digits] [--force]

  digits      a small CNN trained here on scikit-learn's bundled 8x8 digits, upscaled to
              32x32 RGB and JPEG round-tripped (what a client uploads); image/jpeg
              3x32x32; prints its held-out accuracy. The held-out images are written as
              JPEGs to <out>/digits_heldout/ with labels.json, for tests and examples.
  resnet18    gluon model zoo resnet18_v1(pretrained=False), randomly initialised (weights
              cannot be downloaded here); image/jpeg 3x224x224, 1000-line synset. The graph
              carries the ImageNet normalisation, as served models should.
  digits_mlp  an MLP on the 64 raw digit pixels; application/json in and out.
  noop        output = input, application/json [0, 4]: server overhead with no model cost.

Model weights cannot be downloaded on this machine, which is why these are trained or
random-initialised here. Everything is seeded: a rebuild gives the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mxserve.instance.export import export_model  # noqa: E402

SEED = 0
DIGITS_SIZE = 32
JPEG_QUALITY = 90
MIN_DIGITS_ACCURACY = 0.95
RESNET_SHARPNESS = 50.0  # top-1 probability ~0.3-0.8 on the scikit-learn photos


def seed_everything() -> None:
    mx.random.seed(SEED)
    np.random.seed(SEED)


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return train_test_split(digits.images, digits.target, test_size=0.2, random_state=SEED,
                            stratify=digits.target)


def digit_to_jpeg(image8: np.ndarray) -> bytes:
    """An 8x8 digit (0..16) as a 32x32 RGB JPEG, as a client would upload it."""
    gray = np.clip(image8 * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = cv2.resize(gray, (DIGITS_SIZE, DIGITS_SIZE), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_GRAY2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return encoded.tobytes()


def jpeg_to_chw(data: bytes) -> np.ndarray:
    """Decode as the server does: RGB, resized to 32x32 (a no-op here), CHW float32."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    rgb = cv2.resize(bgr[:, :, ::-1], (DIGITS_SIZE, DIGITS_SIZE), interpolation=cv2.INTER_CUBIC)
    return rgb.transpose(2, 0, 1).astype(np.float32)


class Scale(gluon.HybridBlock):
    """x * factor inside the graph, so clients send raw pixels (0.4 does no normalisation)."""

    def __init__(self, factor: float, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def hybrid_forward(self, F, x):
        return x * self.factor


class Normalize(gluon.HybridBlock):
    """(x / 255 - mean) / std with ImageNet statistics, as graph constants."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1) * 255
        std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1) * 255
        self.mean = self.params.get_constant("mean", mx.nd.array(mean))
        self.std = self.params.get_constant("std", mx.nd.array(std))

    def hybrid_forward(self, F, x, mean, std):
        return F.broadcast_div(F.broadcast_sub(x, mean), std)


def train(net, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch_size: int = 32):
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(mx.nd.array(x), mx.nd.array(y)),
                                   batch_size=batch_size, shuffle=True)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": lr})
    for _ in range(epochs):
        for xb, yb in loader:
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])


def save_with_softmax(net, folder: Path, name: str, input_shape: tuple[int, ...]) -> None:
    """Export a trained gluon net as <name>-symbol.json / <name>-0000.params ending in softmax."""
    folder.mkdir(parents=True, exist_ok=True)
    net.hybridize()
    net(mx.nd.zeros(input_shape))
    prefix = str(folder / name)
    net.export(prefix, epoch=0)
    logits = mx.sym.load(prefix + "-symbol.json")
    mx.sym.softmax(logits, name="softmax").save(prefix + "-symbol.json")


def write_signature(folder: Path, input_type: str, input_shape: list[int],
                    output_shape: list[int]) -> None:
    signature = {"inputs": [{"data_name": "data", "data_shape": input_shape}],
                 "input_type": input_type,
                 "outputs": [{"data_name": "softmax", "data_shape": output_shape}],
                 "output_type": "application/json"}
    (folder / "signature.json").write_text(json.dumps(signature, indent=2))


def build_digits(out: Path) -> float:
    seed_everything()
    x_train, x_test, y_train, y_test = digits_split()
    train_x = np.stack([jpeg_to_chw(digit_to_jpeg(im)) for im in x_train])
    net = gluon.nn.HybridSequential(prefix="digits_")
    with net.name_scope():
        net.add(Scale(1 / 255.0),
                gluon.nn.Conv2D(16, 3, padding=1, activation="relu"), gluon.nn.MaxPool2D(),
                gluon.nn.Conv2D(32, 3, padding=1, activation="relu"), gluon.nn.MaxPool2D(),
                gluon.nn.Flatten(), gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    train(net, train_x, y_train, epochs=12, lr=2e-3)

    heldout = out / "digits_heldout"
    shutil.rmtree(heldout, ignore_errors=True)
    heldout.mkdir(parents=True)
    jpegs = [digit_to_jpeg(im) for im in x_test]
    labels = {}
    for index, (data, label) in enumerate(zip(jpegs, y_test)):
        name = f"{index:04d}_{label}.jpg"
        (heldout / name).write_bytes(data)
        labels[name] = int(label)
    (heldout / "labels.json").write_text(json.dumps(labels, indent=0, sort_keys=True))
    predicted = net(mx.nd.array(np.stack([jpeg_to_chw(j) for j in jpegs]))).asnumpy().argmax(1)
    accuracy = float((predicted == y_test).mean())

    folder = out / "src" / "digits"
    save_with_softmax(net, folder, "digits", (1, 3, DIGITS_SIZE, DIGITS_SIZE))
    write_signature(folder, "image/jpeg", [1, 3, DIGITS_SIZE, DIGITS_SIZE], [1, 10])
    (folder / "synset.txt").write_text("".join(f"{d}\n" for d in range(10)))
    return accuracy


def build_resnet18(out: Path) -> None:
    seed_everything()
    net = gluon.nn.HybridSequential(prefix="")
    net.add(Normalize(prefix="normalize_"),
            gluon.model_zoo.vision.resnet18_v1(pretrained=False, classes=1000))
    net.initialize(mx.init.Xavier(magnitude=2.5), ctx=mx.cpu())
    # Random weights give a near-uniform softmax (top-1 ~0.001), where any two images look
    # alike; a sharper classifier makes each photo's answer distinct, like a trained model's.
    classifier = net[1].output.weight
    classifier.set_data(classifier.data() * RESNET_SHARPNESS)
    folder = out / "src" / "resnet18"
    save_with_softmax(net, folder, "resnet18", (1, 3, 224, 224))
    write_signature(folder, "image/jpeg", [1, 3, 224, 224], [1, 1000])
    (folder / "synset.txt").write_text(
        "".join(f"n{90000000 + i:08d} synthetic_class_{i:03d}\n" for i in range(1000)))


def build_digits_mlp(out: Path) -> float:
    seed_everything()
    x_train, x_test, y_train, y_test = digits_split()
    net = gluon.nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(Scale(1 / 16.0), gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    train(net, x_train.reshape(-1, 64).astype(np.float32), y_train, epochs=30, lr=3e-3)
    predicted = net(mx.nd.array(x_test.reshape(-1, 64))).asnumpy().argmax(1)
    folder = out / "src" / "digits_mlp"
    save_with_softmax(net, folder, "digits_mlp", (1, 64))
    write_signature(folder, "application/json", [0, 64], [0, 10])
    return float((predicted == y_test).mean())


def build_noop(out: Path) -> None:
    """Output = input (times a 1-valued parameter): the server's overhead with no model cost."""
    folder = out / "src" / "noop"
    folder.mkdir(parents=True, exist_ok=True)
    data = mx.sym.var("data")
    output = mx.sym.broadcast_mul(data, mx.sym.var("scale", shape=(1, 1)), name="output")
    output.save(str(folder / "noop-symbol.json"))
    mx.nd.save(str(folder / "noop-0000.params"), {"arg:scale": mx.nd.ones((1, 1))})
    signature = {"inputs": [{"data_name": "data", "data_shape": [0, 4]}],
                 "input_type": "application/json",
                 "outputs": [{"data_name": "output", "data_shape": [0, 4]}],
                 "output_type": "application/json"}
    (folder / "signature.json").write_text(json.dumps(signature, indent=2))


BUILDERS = {"digits": build_digits, "resnet18": build_resnet18, "digits_mlp": build_digits_mlp,
            "noop": build_noop}


def write_examples(out: Path) -> None:
    """Inputs for the README's curl examples: a held-out digit (JPEG and 64 JSON numbers)
    and scikit-learn's two photos."""
    import sklearn
    examples = out / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    _, x_test, _, y_test = digits_split()
    first_zero = int(np.flatnonzero(y_test == 0)[0])
    (examples / "digit_0.jpg").write_bytes(digit_to_jpeg(x_test[first_zero]))
    (examples / "digit_0.json").write_text(json.dumps(x_test[first_zero].reshape(-1).tolist()))
    (examples / "noop.json").write_text("[[1.0, 2.0, 3.0, 4.0]]")
    photos = Path(sklearn.__file__).parent / "datasets" / "images"
    for name in ("china.jpg", "flower.jpg"):
        shutil.copyfile(photos / name, examples / name)


def build(out: Path, only: list[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Build (or reuse) the sample archives under `out`; return {name: archive path}."""
    out.mkdir(parents=True, exist_ok=True)
    # Archives built by another version of this script are rebuilt.
    stamp = out / ".built-by"
    script_hash = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != script_hash:
        force = True
    archives = {}
    for name in only or list(BUILDERS):
        archive = out / f"{name}.model"
        if force or not archive.exists():
            result = BUILDERS[name](out)
            if name == "digits":
                count = len(list((out / "digits_heldout").glob("*.jpg")))
                print(f"digits: held-out accuracy {result:.4f} ({count} images)")
                if result < MIN_DIGITS_ACCURACY:
                    raise SystemExit(f"digits accuracy {result:.4f} is below "
                                     f"{MIN_DIGITS_ACCURACY}")
            elif result is not None:
                print(f"{name}: held-out accuracy {result:.4f}")
            export_model(name, out / "src" / name, export_path=out, force=True)
            print(f"wrote {archive}")
        archives[name] = archive
    if not only:
        write_examples(out)
        stamp.write_text(script_hash)
    return archives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--out", default="sample-models", type=Path)
    parser.add_argument("--only", nargs="*", choices=list(BUILDERS))
    parser.add_argument("--force", action="store_true", help="rebuild existing archives")
    args = parser.parse_args()
    build(args.out, args.only, args.force)


if __name__ == "__main__":
    main()
