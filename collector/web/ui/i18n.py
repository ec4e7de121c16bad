"""The UI's words: one catalogue, Simplified Chinese by default, English available.

`t(lang, key, **kw)` looks a key up (`str.format` with `kw`); a missing key is a bug and raises
(tests/test_web_ui.py checks that every key the templates use is here, in both languages).
`negotiate(chosen, accept_language)`: the user's choice (session) first, then the browser's
Accept-Language, then Chinese.
"""

from __future__ import annotations

__all__ = ["LANGS", "MESSAGES", "has", "negotiate", "t"]

LANGS = ("zh", "en")

MESSAGES: dict[str, tuple[str, str]] = {
    # frame
    "app.title": ("好差评整改工作台", "Rating follow-up desk"),
    "nav.cases": ("整改案件", "Cases"),
    "nav.appeals": ("申诉审批", "Appeals"),
    "nav.directory": ("名录", "Directory"),
    "nav.signout": ("退出登录", "Sign out"),
    "nav.lang": ("English", "中文"),
    "nav.signed_in_as": ("{user}（{role}，{hall}）", "{user} ({role}, {hall})"),
    "role.manager": ("大厅负责人", "hall manager"),
    "role.lead": ("窗口负责人", "window lead"),
    "role.inspector": ("督查", "inspector (read-only)"),
    "readonly.note": ("督查账号为只读：可查看全部内容，不能办理。",
                      "An inspector's account is read-only: everything can be seen, nothing done."),
    "flash.done": ("已保存，并已记入审计日志。", "Saved, and recorded in the audit log."),
    "flash.signed_out": ("已退出登录。", "You have signed out."),
    # sign-in
    "login.title": ("登录", "Sign in"),
    "login.username": ("用户名", "User name"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Sign in"),
    "login.hint": ("账号由管理员用 evalterm user add 创建。",
                   "Accounts are created by the administrator with evalterm user add."),
    # refusals by the UI itself
    "refused.title": ("请求被拒绝", "Request refused"),
    "refused.csrf": ("页面已过期或请求无效（安全校验失败）。请返回、刷新页面后重试。",
                     "The page has expired or the request is not valid (security check failed). "
                     "Go back, reload the page and try again."),
    "refused.too_large": ("提交的内容过大。", "The form is too large."),
    "refused.too_long": ("某一栏的文字过长（最多 2000 字）。",
                         "A field is too long (at most 2000 characters)."),
    "refused.bad_form": ("表单无效。", "The form is not valid."),
    "refused.back": ("返回案件列表", "Back to the cases"),
    # refusals by the case service, by ManagerError.reason
    "err.title": ("无法办理", "Not done"),
    "err.forbidden": ("您的角色无权办理此事项（督查为只读；办结与申诉审批由大厅负责人办理）。",
                      "Your role may not do this (inspectors are read-only; closing a case and "
                      "deciding an appeal are for the hall manager)."),
    "err.conflict": ("申诉须由第二人审批：提出申诉的人和被评价的工作人员本人都不能审批。",
                     "An appeal is decided by a second person: neither the person who filed it "
                     "nor the staff member concerned may decide it."),
    "err.state": ("案件当前的状态不允许这一步（可能已被他人办理）。请刷新页面查看。",
                  "The case's state does not allow this step (someone may have done it "
                  "meanwhile). Reload the page."),
    "err.empty": ("请填写必填内容。", "Please fill in the required field."),
    "err.exists": ("该案件已有待审批的申诉。", "The case has a pending appeal already."),
    "err.not_found": ("找不到该记录。", "No such record."),
    "err.bad_credentials": ("用户名或密码错误。", "Unknown user or wrong password."),
    "err.throttled": ("登录失败次数过多，请 {minutes} 分钟后再试。",
                      "Too many failed sign-ins: try again in {minutes} minute(s)."),
    # case list
    "cases.title": ("整改案件", "Follow-up cases"),
    "cases.summary": ("今天 {today}：共 {n} 件，其中逾期 {overdue} 件（逾期在前）。",
                      "Today {today}: {n} case(s), {overdue} overdue (overdue first)."),
    "cases.filter.window": ("窗口", "Window"),
    "cases.filter.state": ("状态", "State"),
    "cases.filter.all_windows": ("全部窗口", "all windows"),
    "cases.filter.active": ("未办结", "not closed"),
    "cases.filter.all": ("全部", "all"),
    "cases.filter.submit": ("筛选", "Filter"),
    "cases.none": ("没有符合条件的案件。", "No case matches."),
    "col.case": ("案件号", "Case"),
    "col.txn": ("办件编号", "Case number"),
    "col.window": ("窗口", "Window"),
    "col.staff": ("工作人员", "Staff"),
    "col.level": ("评价等级", "Rating"),
    "col.reason": ("差评原因", "Reason"),
    "col.state": ("状态", "State"),
    "col.due": ("整改期限", "Due"),
    "col.time": ("评价时间", "Rated at"),
    "col.service": ("事项", "Service"),
    "due.overdue": ("逾期 {n} 天", "overdue by {n} day(s)"),
    "due.today": ("今日到期", "due today"),
    "due.left": ("还剩 {n} 天", "{n} day(s) left"),
    "level.1": ("非常不满意", "very dissatisfied"),
    "level.2": ("不满意", "dissatisfied"),
    "level.3": ("基本满意", "fairly satisfied"),
    "level.4": ("满意", "satisfied"),
    "level.5": ("非常满意", "very satisfied"),
    "state.open": ("待核实", "open"),
    # (the same words as `evalterm case list`, collector/manager/cli.py)
    "state.verified": ("已核实", "verified"),
    "state.rectified": ("已整改", "rectified"),
    "state.called": ("已回访", "called back"),
    "state.closed": ("已办结", "closed"),
    "state.voided": ("已撤销（申诉通过）", "voided (appeal)"),
    # case page
    "case.title": ("案件 {id}", "Case {id}"),
    "case.rating": ("差评", "The poor rating"),
    "case.badge": ("工号 {badge}", "badge {badge}"),
    "case.closed_at": ("办结时间", "Closed at"),
    "case.steps": ("办理记录", "Steps so far"),
    "case.steps.none": ("暂无记录。", "Nothing recorded yet."),
    "case.next": ("下一步", "Next step"),
    "case.done": ("本案件已结束。", "This case is finished."),
    "case.lead_cannot_close": ("回访已完成，待大厅负责人办结。",
                               "The callback is done: the hall manager closes the case."),
    "case.finding": ("核实情况", "Finding"),
    "case.action": ("整改措施", "Action taken"),
    "case.reached": ("是否联系到群众", "Citizen reached"),
    "case.citizen_view": ("群众对整改的意见", "The citizen's view of the fix"),
    "case.yes": ("已联系到", "reached"),
    "case.no": ("未联系到", "not reached"),
    "form.verify": ("核实", "Verify"),
    "form.verify.help": ("核实差评所述情况，写明核实结果。",
                         "Check what the rating says and write down what you found."),
    "form.rectify": ("整改", "Rectify"),
    "form.rectify.help": ("写明采取的整改措施。", "Write down the action taken."),
    "form.callback": ("回访", "Call back"),
    "form.callback.help": ("回访群众：是否联系到，以及群众对整改的意见。",
                           "Call the citizen back: reached or not, and their view of the fix."),
    "form.close": ("办结", "Close"),
    "form.close.help": ("核实、整改、回访均已完成，确认办结。",
                        "Verification, rectification and callback are done: close the case."),
    "form.submit": ("提交", "Submit"),
    "form.appeal": ("申诉", "Appeal"),
    "form.appeal.help": ("认为差评系误操作或恶意评价的，可提出申诉；须由另一位大厅负责人审批，"
                         "被评价的工作人员本人不能审批。",
                         "If the rating is a mistake or malicious, appeal it; another hall "
                         "manager decides, never the staff member concerned."),
    "form.grounds": ("申诉理由", "Grounds"),
    "appeal.none": ("无申诉。", "No appeal."),
    "appeal.pending_note": ("本案件有待审批的申诉。", "This case has a pending appeal."),
    "step.case.open": ("立案", "Case opened"),
    "step.case.verify": ("核实", "Verified"),
    "step.case.rectify": ("整改", "Rectified"),
    "step.case.callback": ("回访", "Called back"),
    "step.case.close": ("办结", "Closed"),
    "step.appeal.file": ("提出申诉", "Appeal filed"),
    "step.appeal.approve": ("申诉批准，差评撤销", "Appeal approved: rating voided"),
    "step.appeal.refuse": ("申诉驳回", "Appeal refused"),
    "step.due": ("期限 {due}", "due {due}"),
    "step.system": ("系统", "system"),
    # appeals
    "appeals.title": ("申诉审批", "Appeals"),
    "appeals.pending": ("待审批", "Pending"),
    "appeals.decided": ("最近的审批", "Recently decided"),
    "appeals.none": ("没有待审批的申诉。", "No pending appeal."),
    "appeals.none_decided": ("暂无。", "None yet."),
    "appeals.rule": ("申诉须由第二人审批：提出申诉的人和被评价的工作人员本人都不能审批。"
                     "批准后，该差评撤销。",
                     "A second person decides: neither the person who filed the appeal nor the "
                     "staff member concerned. Approval voids the rating."),
    "appeal.id": ("申诉号", "Appeal"),
    "appeal.filed_by": ("申诉人", "Filed by"),
    "appeal.filed": ("申诉时间", "Filed at"),
    "appeal.grounds": ("申诉理由", "Grounds"),
    "appeal.state": ("结果", "Result"),
    "appeal.decided_by": ("审批人", "Decided by"),
    "appeal.decided": ("审批时间", "Decided at"),
    "appeal.note": ("审批意见", "Note"),
    "appeal.approve": ("批准（撤销差评）", "Approve (void the rating)"),
    "appeal.refuse": ("驳回", "Refuse"),
    "appeal.state.pending": ("待审批", "pending"),
    "appeal.state.approved": ("已批准", "approved"),
    "appeal.state.refused": ("已驳回", "refused"),
    # directory
    "dir.title": ("名录", "Directory"),
    "dir.hall": ("大厅：{hall}", "Hall: {hall}"),
    "dir.windows": ("窗口", "Windows"),
    "dir.staff": ("工作人员", "Staff"),
    "dir.services": ("事项", "Services"),
    "dir.id": ("编号", "Id"),
    "dir.name": ("名称", "Name"),
    "dir.person": ("姓名", "Name"),
    "dir.badge": ("工号", "Badge"),
    "dir.department": ("部门", "Department"),
    "dir.code": ("事项编码", "Code"),
    "dir.services_of": ("可办事项", "Services"),
    "dir.windows_of": ("所在窗口", "Windows"),
    "dir.empty": ("暂无（用 evalterm directory import 导入）。",
                  "None yet (import with evalterm directory import)."),
}


def has(key: str) -> bool:
    return key in MESSAGES


def t(lang: str, key: str, **kw: object) -> str:
    text = MESSAGES[key][0 if lang == "zh" else 1]
    return text.format(**kw) if kw else text


def negotiate(chosen: object, accept_language: str | None) -> str:
    """The page's language: the user's choice, else the browser's first supported one, else zh."""
    if isinstance(chosen, str) and chosen in LANGS:
        return chosen
    best, best_q = "zh", -1.0
    for n, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        code = tag.strip().lower().split("-")[0]
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if code in LANGS and q > 0 and q - n * 1e-6 > best_q:
            best, best_q = code, q - n * 1e-6
    return best
