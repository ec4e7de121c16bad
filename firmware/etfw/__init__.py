"""evalterm device firmware: one module per concern, hardware injected.

clock      uptime and NTP time            sign       HMAC-SHA256 and the signed-message writer
config     device config and board        message    protocol envelopes, command parsing
keys       debounce, stuck keys, counts   indicators LEDs, buzzer, display text
i18n       user-facing texts              terminal   the rating state machine (pure)
store      small persisted state          outbox     the flash outbox (power-cut safe)
link       Wi-Fi + MQTT, one reconnect    app        wiring and the main loop
fault      a device with a bad config     cpython    CPython stand-ins (tests only)
screen     the display's screens          font       display glyphs read from flash
voice      DFPlayer voice prompts         outputs    state changes to LEDs, display, voice
fbshim     framebuf on CPython (tests only)

Heap (docs/firmware.md, memory budget): the modules needed only while booting (config,
i18n, the outbox's recovery) are dropped again with unload() once used.
"""

FW_VERSION = "1.0.0"
WDT_MS = 30000  # hardware watchdog period; no main loop step blocks nearly as long (app.py)


def unload(name: str) -> None:
    """Forget the submodule `name` (sys.modules and this package's attribute), so that its
    code can be collected once nothing else refers to it. It is loaded again when needed."""
    import sys

    full = __name__ + "." + name
    if full in sys.modules:
        del sys.modules[full]
    g = globals()
    if name in g:
        del g[name]
