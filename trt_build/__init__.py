"""Builds servable model artifacts (SavedModels, optimized variants) and their manifests.

Never imports ``server``: what the server needs from a build is in the manifest it writes.
"""
