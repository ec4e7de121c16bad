"""User-facing texts. Simplified Chinese is the default; English is available.

`texts(lang)` returns one string, a line per text, in a fixed order (indicators.py picks a
line by its number): the screens, the badge label, the five levels, then the reasons in
config.REASONS order, then the display's extras (window label, the confirm prompt, a
short label for `notice` that fits the 128-pixel display). One string per language costs far
less heap than one string object per text; indicators.py keeps only the chosen language's
and drops this module.
"""


def texts(lang: str) -> str:
    if lang == "en":
        return ("Please rate our service\nPlease rate this service\nWhat went wrong?\n"
                "Thank you for your rating\nService paused\nConfiguration error\nBadge\n"
                "Very dissatisfied\nDissatisfied\nFair\nSatisfied\nVery satisfied\n"
                "Attitude\nEfficiency\nNot told everything at once\nLong wait\nFacilities\n"
                "Other\nWindow\nPress again to confirm\nNot told all at once")
    return ("欢迎评价\n请对本次服务评价\n请选择不满意原因\n感谢您的评价\n暂停服务\n配置错误\n工号\n"
            "非常不满意\n不满意\n基本满意\n满意\n非常满意\n"
            "服务态度\n办事效率\n一次性告知不到位\n等候时间长\n环境设施\n其他\n"
            "窗口\n再按一次确认\n未一次性告知")
