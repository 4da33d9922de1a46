"""Training for the digits classifier that build.py writes: data split, the network in TensorFlow and PyTorch,
SGD training, the ONNX export and held-out evaluation.

Data: scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``: 1,797 images, pixel values
0..16, shipped inside scikit-learn; nothing is downloaded). A fixed permutation
(``numpy.random.default_rng(SPLIT_SEED)``) holds out HELDOUT images; every model is scored on the same ones.

Network, the same in both frameworks: x (FP32 [-1, 64], pixel values 0..16, row-major) -> /16 -> Dense(64->64,
relu) -> Dense(64->10) -> softmax -> ``probabilities`` FP32 [-1, 10]. Each framework initialises it its own
idiomatic way from its own seeded generator (TensorFlow: Glorot-uniform kernels and zero biases, as Keras;
PyTorch: ``nn.Linear``'s default), then both run the same plain minibatch SGD on the same batches in the same
order. So the two are trained independently and disagree on a few images, as two real teams' models would.
Version 1 of each is the checkpoint after EPOCHS[1] epochs, version 2 after EPOCHS[2].

Determinism: one CPU thread per framework (see ``single_thread``) and seeded generators; on one machine a
rebuild gives identical weights. Float sums may round differently on another CPU, so the rebuild test compares
accuracies within a tolerance rather than bytes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import tensorflow as tf
import torch

SPLIT_SEED = 2024
HELDOUT = 360
BATCH_SEED = 7
INIT_SEED = 0
BATCH_SIZE = 32
LEARNING_RATE = 0.1
HIDDEN = 64
EPOCHS = {1: 2, 2: 30}  # version -> epochs of training
PIXEL_MAX = 16.0  # load_digits' pixel scale

T = TypeVar("T")


@dataclass(frozen=True)
class Split:
    """Held-out and training images (pixel values 0..16, FP32 [n, 64]) with their labels and dataset indices."""

    heldout_index: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    train_x: np.ndarray
    train_y: np.ndarray


def single_thread() -> None:
    """One thread in each framework, before either runs an op: sums in one order, weights identical on rebuild."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    torch.set_num_threads(1)


def load_split() -> Split:
    from sklearn.datasets import load_digits  # the data ships inside scikit-learn

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    held, train = np.sort(order[:HELDOUT]), order[HELDOUT:]
    return Split(heldout_index=held, heldout_x=x[held], heldout_y=y[held], train_x=x[train], train_y=y[train])


def batches(n_train: int, epochs: int) -> Iterator[tuple[int, np.ndarray]]:
    """(epoch, indices) for every minibatch, the same sequence for both frameworks."""
    rng = np.random.default_rng(BATCH_SEED)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n_train)
        for start in range(0, n_train, BATCH_SIZE):
            yield epoch, order[start : start + BATCH_SIZE]


# ----------------------------------------------------------------------------------------------------
# TensorFlow
# ----------------------------------------------------------------------------------------------------


class TFDigits(tf.Module):
    def __init__(self, weights: list[np.ndarray] | None = None) -> None:
        super().__init__(name="digits")
        if weights is None:
            gen = tf.random.Generator.from_seed(INIT_SEED)
            weights = [_glorot(gen, 64, HIDDEN), np.zeros(HIDDEN, np.float32),
                       _glorot(gen, HIDDEN, 10), np.zeros(10, np.float32)]
        self.w1 = tf.Variable(weights[0], name="dense/kernel")
        self.b1 = tf.Variable(weights[1], name="dense/bias")
        self.w2 = tf.Variable(weights[2], name="dense_1/kernel")
        self.b2 = tf.Variable(weights[3], name="dense_1/bias")

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        hidden = tf.nn.relu(tf.matmul(x / PIXEL_MAX, self.w1) + self.b1)
        return tf.matmul(hidden, self.w2) + self.b2

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": tf.nn.softmax(self.logits(x), axis=-1)}

    def weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in (self.w1, self.b1, self.w2, self.b2)]


def _glorot(gen: tf.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return gen.uniform((fan_in, fan_out), -limit, limit, dtype=tf.float32).numpy()


def train_tf(split: Split) -> dict[int, TFDigits]:
    """One training run; a snapshot of the weights at each version's epoch count."""
    model = TFDigits()
    variables = [model.w1, model.b1, model.w2, model.b2]

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32), tf.TensorSpec([None], tf.int64)])
    def step(x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model.logits(x)))
        for variable, grad in zip(variables, tape.gradient(loss, variables), strict=True):
            variable.assign_sub(LEARNING_RATE * grad)

    snapshots = _snapshots(split, lambda idx: step(split.train_x[idx], split.train_y[idx]), model.weights)
    return {version: TFDigits(weights) for version, weights in snapshots.items()}


# ----------------------------------------------------------------------------------------------------
# PyTorch and ONNX
# ----------------------------------------------------------------------------------------------------


class TorchDigits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(64, HIDDEN)
        self.dense_1 = torch.nn.Linear(HIDDEN, 10)
        self.pixel_max = PIXEL_MAX  # an attribute: TorchScript does not read module globals

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_1(torch.relu(self.dense(x / self.pixel_max)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)


def train_torch(split: Split) -> dict[int, TorchDigits]:
    """One training run; a snapshot of the weights at each version's epoch count."""
    torch.manual_seed(INIT_SEED)
    model = TorchDigits()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    x, y = torch.from_numpy(split.train_x), torch.from_numpy(split.train_y)

    def step(idx: np.ndarray) -> None:
        index = torch.from_numpy(idx)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.logits(x[index]), y[index]).backward()
        optimizer.step()

    def snapshot() -> TorchDigits:
        copy = TorchDigits()
        copy.load_state_dict(model.state_dict())
        return copy.eval()

    return _snapshots(split, step, snapshot)


def _snapshots(split: Split, step: Callable[[np.ndarray], object], snapshot: Callable[[], T]) -> dict[int, T]:
    """Run every minibatch through ``step``; take ``snapshot()`` after each version's last epoch."""
    taken: dict[int, T] = {}
    last = 0
    for epoch, idx in batches(len(split.train_x), max(EPOCHS.values())):
        if epoch != last:
            taken.update({v: snapshot() for v, e in EPOCHS.items() if e == last})
            last = epoch
        step(idx)
    taken.update({v: snapshot() for v, e in EPOCHS.items() if e == last})
    return taken


def onnx_bytes(model: TorchDigits) -> bytes:
    """The model exported by torch.onnx (the torch.export-based exporter), batch dimension free, one file."""
    # The exporter's own chatter (deprecations; "torchvision is not installed", which this model does not use).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(), (torch.zeros(2, 64),), None, input_names=["x"], output_names=["probabilities"],
            dynamo=True, external_data=False, dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=18, verbose=False)
    assert program is not None
    return bytes(program.model_proto.SerializeToString(deterministic=True))
