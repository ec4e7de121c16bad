"""evalterm device firmware: one module per concern, hardware injected.

clock      uptime and NTP time            sign       HMAC-SHA256 and the signed-message writer
config     device config and board        message    protocol envelopes, command parsing
keys       debounce, stuck keys, counts   indicators LEDs, buzzer, display text
i18n       user-facing texts              terminal   the rating state machine (pure)
store      small persisted state          outbox     the flash outbox (power-cut safe)
link       Wi-Fi + MQTT, one reconnect    app        wiring and the main loop
"""

FW_VERSION = "1.0.0"
