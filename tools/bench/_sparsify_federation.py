"""The exploration's federated setting in one process: Fashion-MNIST shards and one Keras model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.edge_client.codec.pipeline import unflatten
from fedge.firmware_sim.partition import parse_partition_spec, partition, split_local
from fedge.model_export.datasets import load_fashion_mnist

DEVICES, PER_ROUND, EPOCHS, LR, BATCH = 100, 20, 2, 0.1, 32
PARTITION = "dirichlet:0.5"
# Keras copies of zoo models: conv filters, then dense hidden units (0: no hidden layer).
MODELS = {"cnn-fmnist": (8, 16, 0), "cnn-fmnist-wide": (16, 32, 64)}


@dataclass
class Federation:
    """Data, model and the local trainer shared by every scheme (one Keras model, reused)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shards: list[np.ndarray]
    model: Any
    init: np.ndarray
    seed: int
    shapes: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def build(cls, model_name: str, seed: int = 0) -> Federation:
        import tensorflow as tf

        xtr, ytr, xte, yte = load_fashion_mnist()
        parts = partition(ytr, DEVICES, parse_partition_spec(PARTITION), seed, min_size=2)
        shards = [split_local(p, 0.2, (seed, i))[0] for i, p in enumerate(parts)]
        tf.random.set_seed(seed)
        first, second, hidden = MODELS[model_name]
        layers = tf.keras.layers
        model = tf.keras.Sequential(
            [
                tf.keras.Input((28, 28, 1)),
                layers.Conv2D(first, 3, activation="relu"),
                layers.AveragePooling2D(),
                layers.Conv2D(second, 3, activation="relu"),
                layers.AveragePooling2D(),
                layers.Flatten(),
                *([layers.Dense(hidden, activation="relu")] if hidden else []),
                layers.Dense(10),
            ]
        )
        weights = model.get_weights()
        fed = cls(
            xtr.reshape(-1, 28, 28, 1).astype(np.float32),
            ytr,
            xte.reshape(-1, 28, 28, 1).astype(np.float32),
            yte,
            shards,
            model,
            np.concatenate([w.ravel() for w in weights]).astype(np.float64),
            seed,
            tuple(w.shape for w in weights),
        )
        fed._compile()
        return fed

    def _compile(self) -> None:
        import tensorflow as tf

        model, opt = self.model, tf.keras.optimizers.SGD(LR)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._free = [
            tf.Variable(tf.ones(v.shape), trainable=False) for v in model.trainable_variables
        ]
        self._all_free = True  # what ``self._free`` holds now: every coordinate free

        @tf.function
        def step(x: Any, y: Any) -> None:
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            opt.apply_gradients(
                zip(
                    [g * f for g, f in zip(grads, self._free, strict=True)],
                    model.trainable_variables,
                    strict=True,
                )
            )

        self._step = step

    def _set_free(self, free: np.ndarray | None) -> None:
        """Mask the gradients to ``free`` (None: all free; not reassigned while it stays so)."""
        if free is None and self._all_free:
            return
        mask = np.ones(self.init.size) if free is None else free
        for var, part in zip(self._free, unflatten(mask, self.shapes), strict=True):
            var.assign(part)
        self._all_free = free is None

    def train(
        self, weights: np.ndarray, device: int, seed: int, free: np.ndarray | None = None
    ) -> np.ndarray:
        """Local SGD from ``weights``; only coordinates where ``free`` is 1 move. Returns delta."""
        self._set_free(free)
        self.model.set_weights(unflatten(weights, self.shapes))
        rng = np.random.default_rng(seed)
        for _ in range(EPOCHS):
            order = rng.permutation(self.shards[device])
            for lo in range(0, len(order), BATCH):
                batch = order[lo : lo + BATCH]
                self._step(self.x_train[batch], self.y_train[batch])
        new = np.concatenate([w.ravel() for w in self.model.get_weights()])
        return new.astype(np.float64) - weights

    def accuracy(self, weights: np.ndarray) -> float:
        self.model.set_weights(unflatten(weights, self.shapes))
        logits = self.model.predict(self.x_test, batch_size=2000, verbose=0)
        return float(np.mean(np.argmax(logits, axis=1) == self.y_test))
