"""The process boundary of ``imgserve serve --workers N``: front-end workers talk to the one
model-owner process over a Unix socket (control, results) and shared memory (pixels)."""
