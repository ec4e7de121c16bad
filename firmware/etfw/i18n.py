"""User-facing texts. Simplified Chinese is the default; English is available."""


def _zh() -> dict:
    return {
        "idle": "欢迎评价",
        "invited": "请对本次服务评价",
        "reason": "请选择不满意原因",
        "thanks": "感谢您的评价",
        "paused": "暂停服务",
        "config_error": "配置错误",
        "levels": ("非常不满意", "不满意", "基本满意", "满意", "非常满意"),
        "attitude": "服务态度",
        "efficiency": "办事效率",
        "notice": "一次性告知不到位",
        "wait": "等候时间长",
        "facility": "环境设施",
        "other": "其他",
        "staff": "工号",
    }


def _en() -> dict:
    return {
        "idle": "Please rate our service",
        "invited": "Please rate this service",
        "reason": "What went wrong?",
        "thanks": "Thank you for your rating",
        "paused": "Service paused",
        "config_error": "Configuration error",
        "levels": ("Very dissatisfied", "Dissatisfied", "Fair", "Satisfied", "Very satisfied"),
        "attitude": "Attitude",
        "efficiency": "Efficiency",
        "notice": "Not told everything at once",
        "wait": "Long wait",
        "facility": "Facilities",
        "other": "Other",
        "staff": "Badge",
    }


def texts(lang: str) -> dict:
    """Only the chosen language is built (heap): functions, not one big module dict."""
    return _en() if lang == "en" else _zh()
