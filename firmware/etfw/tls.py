"""TLS to the broker: the broker's certificate must chain to one of the pinned CAs.

The CAs are DER files in flash (config `broker.tls.ca`, a list: during a rotation it holds
the old and the new CA, so the device keeps connecting whichever one the broker's
certificate comes from). The host name the device connects to (`broker.host`, a DNS name
or an IP address) must be in the certificate: mbedTLS checks it (subject alternative name
or common name) when the client passes it as server_hostname, which umqtt.simple does.
Loaded at each connect and dropped with the context: on the ESP32 the context and the
session live on the IDF heap (mbedTLS), not on the MicroPython heap (docs/firmware.md).
"""

import ssl


class Pinned:
    """What umqtt.simple takes as its `ssl` argument (it calls wrap_socket). Keeps the TCP
    socket under the TLS one (`raw`): an SSLSocket has no settimeout, and the link's timed
    socket sets the timeout on the TCP socket instead (link._TimedSocket)."""

    def __init__(self, cafiles) -> None:
        """Raises OSError (a CA file is missing) or ValueError (not a DER certificate)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        for path in cafiles:
            with open(path, "rb") as f:
                ctx.load_verify_locations(cadata=f.read())
        self._ctx = ctx
        self.raw = None

    def wrap_socket(self, sock, server_hostname=None):
        self.raw = sock
        return self._ctx.wrap_socket(sock, server_hostname=server_hostname)
