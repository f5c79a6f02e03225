"""Black-box load tests and benchmarks over HTTP. Never imports TensorFlow in-process:
what needs the model (the naive baseline, the in-process ceiling) runs as its own process."""
