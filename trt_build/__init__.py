"""Builds servable model artifacts (SavedModels, optimized variants) and their manifests.

What the server needs from a build is in the manifest it writes (``model_contract``). Of the
server it uses only ``server.runtimes``: a build is verified through the code that will serve
it (``tests/test_package_boundaries.py`` checks this).
"""
