"""The whole device on fakes: a 1-2 rating with its reason, presses outside an invitation,
forged and replayed commands."""

from etfw.sign import Signer
from fwfakes import cmd_payload
from fwrig import Rig


def test_bad_rating_with_reason_and_uninvited_count():
    r = Rig()
    r.run(100)
    r.press(5)  # not invited: never a rating
    r.cmd(1, "invite", txn="T9", staff={"name": "李", "badge": "1"}, ttl=60)
    r.run(50)
    r.press(1)
    r.press(3)  # reason key 3 = notice
    r.run(100)
    ms = r.broker.messages("rating")
    assert [(m["level"], m["reason"]) for m in ms] == [(1, "notice")]
    ev = [m for m in r.broker.messages("event") if m["type"] == "key_uninvited"]
    assert ev[0]["data"] == {"key": 5, "state": "idle"}
    assert r.dev.uninvited_total == 1


def test_forged_and_replayed_commands_ignored():
    r = Rig()
    r.run(100)
    m = r.dev.msgs
    forged = cmd_payload(Signer(bytes(32)), m.t_cmd,
                         [("v", 1), ("kind", "cmd"), ("cmd", "pause"), ("cseq", 1), ("ts", 1)])
    r.broker.pending_in.append((m.t_cmd, forged))
    r.run(50)
    assert r.dev.term.state == "idle" and r.dev.cmd_bad == 1
    r.cmd(5, "pause")
    r.run(50)
    assert r.dev.term.state == "paused"
    r.cmd(6, "resume")
    r.cmd(6, "pause")  # same cseq again: ignored
    r.run(50)
    assert r.dev.term.state == "idle" and r.dev.cmd_bad == 2 and r.dev.cmd_error == "cseq"
