"""The terminal's outputs fanned out: the indicators first, then the display and the voice
when the board has them. Each gets every state change (show), confirm-mode preview,
display command (message) and main-loop tick, in that order."""


class Outputs:
    def __init__(self, parts) -> None:
        self.parts = [p for p in parts if p is not None]

    def show(self, state: str, now: int, info=None) -> None:
        for p in self.parts:
            p.show(state, now, info)

    def preview(self, key: int, now: int, reason=None) -> None:
        for p in self.parts:
            p.preview(key, now, reason)

    def message(self, text: str) -> None:
        for p in self.parts:
            p.message(text)

    def tick(self, now: int) -> None:
        for p in self.parts:
            p.tick(now)


def build(hw: dict, cfg, ui):
    """The terminal's outputs for this board: `ui` (the Indicators) alone when the board has
    no display panel (hw["screen"] + hw["font"]) and no voice module (hw["voice"]), so a
    board without them loads none of this code."""
    parts = [ui]
    fb = hw.get("screen")
    if fb is not None and hw.get("font") is not None:
        from .font import Font
        from .screen import Screen

        d = cfg.display or {}
        parts.append(Screen(fb, Font(hw["font"]), ui.text, cfg.window, d.get("page_ms", 5000)))
    if hw.get("voice") is not None:
        from .voice import Voice

        v = cfg.voice or {}
        parts.append(Voice(hw["voice"], v.get("lang", cfg.lang), v.get("volume", 20),
                           cfg.confirm_ms > 0))
    return ui if len(parts) == 1 else Outputs(parts)
