"""The peer benchmark's toy model as an MLServer runtime; ``loadtests.peers`` copies this file
into the model's folder, beside its ``model-settings.json`` (adaptive batching on there).

A sleep per batch (not per item), blocking as device work would: one batch at a time.
"""

import time

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class ToyModel(MLModel):  # type: ignore[misc]
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        time.sleep(self.settings.parameters.extra["batch_seconds"])
        scores = images.reshape(len(images), -1).mean(axis=1, keepdims=True).astype(np.float32)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("scores", scores)])
