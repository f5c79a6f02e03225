"""The new head and its training: global average pooling (the backbone's own), Dense(1024,
ReLU), then one logit per class; Adam on categorical cross-entropy, early stopping on the
validation loss with the best epoch's weights kept.

The head trains on the cached pooled features, which is the same computation as training it on
top of the frozen backbone (inference-mode batch norm, no dropout below the head) at a
fraction of the cost. ``--fine-tune-blocks K`` then trains the top K blocks too, at a lower
learning rate, on the activations entering them (computed once: the blocks below stay frozen).
Batch normalization stays frozen in inference mode while fine-tuning, as Keras advises for
small data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from trt_build.train.backbone import Backbone

if TYPE_CHECKING:
    import keras

HIDDEN_UNITS = 1024
HIDDEN_LAYER = "head_dense"
LOGITS_LAYER = "head_logits"


@dataclass(frozen=True)
class Schedule:
    learning_rate: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 5
    """Epochs without a lower validation loss before training stops."""


@dataclass(frozen=True)
class Fit:
    epochs: int
    best_epoch: int
    best_val_loss: float

    def as_dict(self) -> dict[str, float | int]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "best_val_loss": round(self.best_val_loss, 5)}


def head_layers(classes: int) -> tuple[Any, Any]:
    from keras import layers

    return (
        layers.Dense(HIDDEN_UNITS, activation="relu", name=HIDDEN_LAYER),
        layers.Dense(classes, name=LOGITS_LAYER),
    )


def with_head(network: keras.Model, backbone: Backbone, head: Sequence[Any]) -> keras.Model:
    """The whole classifier: the backbone's input to the head's logits (the softmax is the
    serving graph's, as for the default model)."""
    import keras

    x = network.get_layer(backbone.pooled_layer).output
    for layer in head:
        x = layer(x)
    return keras.Model(network.input, x, name=f"{backbone.name}_classifier")


def epoch_bar(desc: str, total: int) -> Any:
    """A Keras callback showing a tqdm bar over the epochs, with the losses."""
    import keras

    class EpochBar(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            self.bar = tqdm(total=total, desc=desc, unit="epoch")

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            self.bar.set_postfix(loss=f"{logs.get('loss', 0):.4f}", val_loss=f"{logs.get('val_loss', 0):.4f}")
            self.bar.update(1)

        def on_train_end(self, logs: dict[str, float] | None = None) -> None:
            self.bar.close()

    return EpochBar()


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: int,
    schedule: Schedule,
    desc: str,
) -> Fit:
    """Train ``model`` (its trainable weights) with early stopping; it keeps its best epoch's weights."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(schedule.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=schedule.patience, restore_best_weights=True)
    history = model.fit(
        x,
        keras.utils.to_categorical(y, classes),
        validation_data=(x_val, keras.utils.to_categorical(y_val, classes)),
        batch_size=schedule.batch_size,
        epochs=schedule.max_epochs,
        shuffle=True,
        callbacks=[stop, epoch_bar(desc, schedule.max_epochs)],
        verbose=0,
    )
    val_losses = history.history["val_loss"]
    best = int(np.argmin(val_losses))
    return Fit(epochs=len(val_losses), best_epoch=best + 1, best_val_loss=float(val_losses[best]))


def train_head(
    features: np.ndarray,
    y: np.ndarray,
    val_features: np.ndarray,
    y_val: np.ndarray,
    classes: int,
    schedule: Schedule,
) -> tuple[keras.Model, Fit]:
    """The head (pooled features -> logits), trained; its layers are ``model.layers[1:]``."""
    import keras

    layers = head_layers(classes)
    inputs = keras.Input(shape=features.shape[1:], name="pooled_features")
    x = inputs
    for layer in layers:
        x = layer(x)
    model = keras.Model(inputs, x, name="head")
    return model, fit(model, features, y, val_features, y_val, classes, schedule, "training the head")


def cut_below(network: keras.Model, backbone: Backbone, blocks: int) -> Any:
    """The tensor entering the top ``blocks`` blocks (the input of the first layer of block
    ``len(blocks) - blocks``)."""
    if not 1 <= blocks <= len(backbone.blocks):
        raise ValueError(f"--fine-tune-blocks must be between 0 and {len(backbone.blocks)}")
    prefix = backbone.blocks[len(backbone.blocks) - blocks]
    first = next(layer for layer in network.layers if layer.name.startswith(prefix))
    return first.input


def tunable(network: keras.Model, backbone: Backbone, blocks: int) -> list[str]:
    """The layers fine-tuning trains: the weighted layers of the top ``blocks`` blocks and those
    above them, except batch normalization."""
    import keras

    prefixes = backbone.blocks[len(backbone.blocks) - blocks :] + backbone.top_layers
    return [
        layer.name
        for layer in network.layers
        if layer.name.startswith(prefixes) and layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


def below_and_above(
    network: keras.Model, backbone: Backbone, head: Sequence[Any], blocks: int
) -> tuple[keras.Model, keras.Model]:
    """The frozen part (input -> the cut) and the part fine-tuning trains (the cut -> logits),
    sharing their layers with ``network`` and ``head``: training the second trains the classifier."""
    import keras

    cut = cut_below(network, backbone, blocks)
    below = keras.Model(network.input, cut, name="frozen_blocks")
    x = network.get_layer(backbone.pooled_layer).output
    for layer in head:
        x = layer(x)
    above = keras.Model(cut, x, name="tuned_blocks")
    names = set(tunable(network, backbone, blocks))
    for layer in network.layers:
        layer.trainable = layer.name in names
    return below, above
