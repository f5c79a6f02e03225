"""The ``imgserve`` command: the serving commands (``server.cli``) and the build commands
(``trt_build.cli``) under one name, without the server importing the build package."""
