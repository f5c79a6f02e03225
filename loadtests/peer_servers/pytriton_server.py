"""The peer benchmark's toy model on PyTriton; run by ``loadtests.peers`` in PyTriton's own venv.

    python pytriton_server.py PORT MODEL MAX_BATCH BATCH_SECONDS QUEUE_DELAY_US

A sleep per batch (not per item), dynamic batching on, HTTP on 127.0.0.1 only. SIGTERM stops
it as Ctrl+C does, so Triton shuts down and cleans its workspace.
"""

import signal
import sys
import time

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    port, model, max_batch, batch_s, delay_us = sys.argv[1:6]
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    @batch  # type: ignore[untyped-decorator]
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(float(batch_s))
        return {"scores": images.reshape(len(images), -1).mean(axis=1, keepdims=True).astype(np.float32)}

    config = TritonConfig(http_address="127.0.0.1", http_port=int(port), allow_grpc=False, allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model,
            infer_func=infer,
            inputs=[Tensor(name="images", dtype=np.uint8, shape=(-1, -1, 3))],
            outputs=[Tensor(name="scores", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=int(max_batch),
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(delay_us)),
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
