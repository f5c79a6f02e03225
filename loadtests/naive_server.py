"""The baseline every tutorial ships: FastAPI calling ``model.predict`` once per request.

No batching, no limits, inference on the event loop. Same model and preprocessing as
imgserve, so a benchmark against it measures the serving design alone. Run as its own
process: ``python -m loadtests.naive_server --model models/efficientnet_lite0/1 --port 8001``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from model_contract.manifest import ModelManifest


def create_naive_app(version_dir: Path) -> FastAPI:
    import keras

    manifest = ModelManifest.read(version_dir)
    model = keras.saving.load_model(version_dir / "model.keras")
    labels = manifest.labels
    prep = manifest.preprocessing
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/classify")
    async def classify(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 - the tutorial's idiom
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        scale = prep.resize_shorter_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (image.width - prep.crop_size) // 2, (image.height - prep.crop_size) // 2
        image = image.crop((left, top, left + prep.crop_size, top + prep.crop_size))
        x = (np.asarray(image, dtype=np.float32)[None] - prep.mean) / prep.std
        logits = model.predict(x, verbose=0)[0]
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:5]
        return {
            "class": labels[int(best[0])],
            "confidence": float(probabilities[best[0]]),
            "predictions": [{"label": labels[int(i)], "index": int(i), "score": float(probabilities[i])} for i in best],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True, help="model version folder")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_naive_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
