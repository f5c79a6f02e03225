"""What a served model is, shared by the server, the builds and the load tests.

A leaf package: it imports nothing from ``server``, ``trt_build`` or ``loadtests``. It holds
the typed manifest (reader and writer), the preprocessing spec, the image decode that turns a
client's bytes into the model's input tensor, and the errors that decode (and every service
behind a protocol) raises. Because the server and ``imgserve verify`` both decode through
here, a build is verified on exactly the tensors it will be served.
"""
