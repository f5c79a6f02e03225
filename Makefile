# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODELS ?= models
EXTRAS ?= cpu,jax,dev
# The stamp is re-made when pyproject.toml changes, so `make` re-installs only then.
INSTALLED := $(VENV)/.installed
DEFAULT_MODEL := $(MODELS)/efficientnet_lite0/1/manifest.json

.PHONY: install model serve test lint fuzz abuse bench clean protos constraints
# wrk (Debian package) is the low-overhead load generator; without it the harness falls
# back to its Python generator, which needs more of the machine's CPU.
BENCH_ARGS ?= --clients 1,8,32 --rates 60 --duration 8

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(INSTALLED)

$(DEFAULT_MODEL): | $(INSTALLED)
	$(BIN)/imgserve build-default --repository $(MODELS)

model: $(DEFAULT_MODEL)

serve: model
	$(BIN)/imgserve serve --model-repository $(MODELS)

test: model
	$(BIN)/python -m pytest

# The property, mutation and schema fuzzers of `make test`, with a much larger budget and
# fresh randomness (about 20 minutes on 2 cores). FUZZ_MUTANTS: mutants per seed image.
FUZZ_MUTANTS ?= 2000
fuzz: model
	IMGSERVE_FUZZ_PROFILE=fuzz IMGSERVE_FUZZ_MUTANTS=$(FUZZ_MUTANTS) IMGSERVE_FUZZ_SEED=$$RANDOM \
		$(BIN)/python -m pytest -p no:cacheprovider tests/model_contract/test_decode_fuzz.py \
		tests/server/test_codec_properties.py tests/server/test_openapi_fuzz.py \
		tests/server/grpc/test_codec_properties.py tests/server/grpc/test_bad_requests.py

# Noisy neighbour: legitimate clients quiet, then beside a hostile client (loadtests/abuse.py).
abuse: model
	$(BIN)/python -m loadtests.abuse --out loadtests/results/abuse.json

# The gRPC stubs (server/grpc_api/inference_pb2.py and .pyi) from server/grpc_api/inference.proto.
protos: install
	$(BIN)/python -m server.grpc_api.regenerate

# The container images' pinned dependencies (constraints/image-*.txt), resolved by pip for their
# Python and platform; run after changing a requirement in pyproject.toml.
constraints: install
	$(BIN)/python constraints/resolve.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check batching server trt_build loadtests tests model_contract imgserve
	$(BIN)/mypy batching model_contract imgserve server trt_build loadtests

bench: model
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MODELS)
