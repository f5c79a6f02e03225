"""Locust scenarios for imgserve. Run with the ``locust`` CLI in its own process; never
import this next to TensorFlow (locust's gevent patching and TensorFlow crash together)."""
