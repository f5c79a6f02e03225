"""The HTTP front end: decode and validate images, batch them into a runtime, answer top-k."""
