"""Voice prompts through a DFPlayer Mini (or a compatible UART MP3 module: YX5200, MH2024K),
driven by the terminal's state changes like the indicators (show / message / preview / tick).

Serial protocol (9600 baud 8N1; one 10-byte frame per command, no reply asked for):

    7E FF 06 CMD 00 P_HI P_LO C_HI C_LO EF
    checksum C = 0x10000 - (FF + 06 + CMD + 00 + P_HI + P_LO), 16 bits, big-endian

    CMD 0x06 volume P = 0..30          CMD 0x0F play folder P_HI, file P_LO (01/005.wav)
    CMD 0x16 stop                       CMD 0x09 source P = 2 (the SD card)

The SD card holds one folder per language (01 zh, 02 en) of numbered files built by
firmware/tools/build_voice.py with espeak-ng: PROMPTS below gives the numbers. A new prompt
interrupts the one playing (the module has no queue), which is what a citizen pressing on
wants.
"""

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# File numbers in each language folder (build_voice.py writes the same numbers).
INVITE = const(1)
REASON = const(2)
THANKS = const(3)
PAUSED = const(4)
CONFIRM = const(5)
INVITE_CONFIRM = const(6)  # the invitation in confirm mode: it says how to confirm
LEVEL1 = const(11)  # 11..15: the five levels (the keys read out)
REASON1 = const(21)  # 21..26: the reasons, in config.REASONS order
REASONS = ("attitude", "efficiency", "notice", "wait", "facility", "other")
FOLDERS = {"zh": 1, "en": 2}


def frame(cmd: int, param: int = 0) -> bytes:
    hi = (param >> 8) & 0xFF
    lo = param & 0xFF
    c = (0x10000 - (0xFF + 0x06 + cmd + hi + lo)) & 0xFFFF
    return bytes((0x7E, 0xFF, 0x06, cmd, 0x00, hi, lo, c >> 8, c & 0xFF, 0xEF))


class Voice:
    def __init__(self, uart, lang: str = "zh", volume: int = 20, confirm: bool = False) -> None:
        """`uart`: machine.UART(…, baudrate=9600) or anything with write(bytes)."""
        self._uart = uart
        self._invite = INVITE_CONFIRM if confirm else INVITE
        self.folder = FOLDERS.get(lang, 1)
        self.volume = volume
        self.last = 0  # the last file played (tests, heartbeat)
        uart.write(frame(0x09, 2))
        uart.write(frame(0x06, volume))

    def play(self, n: int) -> None:
        self.last = n
        self._uart.write(frame(0x0F, (self.folder << 8) | n))

    def set_volume(self, v: int) -> None:
        self.volume = v
        self._uart.write(frame(0x06, v))

    def show(self, state: str, now: int, info=None) -> None:
        if state == "invited":
            self.play(self._invite)
        elif state == "reason":
            self.play(REASON)
        elif state == "thanks":
            self.play(THANKS)
        elif state == "paused":
            self.play(PAUSED)
        elif state == "idle" and self.last == self._invite:
            # An invitation withdrawn (cancel, expiry) may still be talking: stop it. After
            # thanks it is left to finish (thanks_ms can be shorter than the prompt).
            self._uart.write(frame(0x16))
            self.last = 0

    def preview(self, key: int, now: int, reason=None) -> None:
        """Confirm mode: read the key out (its level, or its reason at the reason step)."""
        self.play(REASON1 + REASONS.index(reason) if reason else LEVEL1 + key - 1)

    def message(self, text: str) -> None:
        pass

    def tick(self, now: int) -> None:
        pass
