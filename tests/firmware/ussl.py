"""Test shim (e2e only): umqtt.simple 1.3.4, the version on PyPI that the e2e tests run,
wraps its socket with `ussl.wrap_socket(sock, **ssl_params)`, a module MicroPython 1.29 no
longer has. etfw.link.umqtt_factory gives it the pinned context (etfw.tls.Pinned) and the
host name; this hands them to the context, as the current umqtt.simple (the ESP32
image's) does itself."""


def wrap_socket(sock, context, server_hostname):
    return context.wrap_socket(sock, server_hostname=server_hostname)
