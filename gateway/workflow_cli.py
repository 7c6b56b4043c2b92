"""People's workflow commands (issue 16): `intelbus hit`, `intelbus request`, `intelbus directive`.

Clients of the gateway's workflow routes (gateway/workflow_api.py), acting as the logged-in
identity: the gateway checks the role and the item's history and sends the command; the workflow
job decides. After sending, the command waits a few seconds (--wait) for the job's event in the
item's history and prints it, or says "sent; not yet processed". Times are China Standard Time.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from gateway.cli import _client, _fail, _settings
from gateway.client import ClientError
from schemas.times import CST, cst

NOTE = """\
You act as the identity of `intelbus login` (role command_center); the gateway checks that your
agency is a party who may do this, sends the command and audits it; the workflow job records the
result. Times are China Standard Time (CST)."""


def when(ms) -> str:
    return cst(ms / 1000) if ms else "-"


def left(ms, now_ms: int) -> str:
    if not ms:
        return "-"
    s = int((ms - now_ms) / 1000)
    sign, s = ("-" if s < 0 else ""), abs(s)
    h, rest = divmod(s, 3600)
    return f"{sign}{h}h{rest // 60:02d}m" if h else f"{sign}{rest // 60}m{rest % 60:02d}s"


def event_line(e: dict) -> str:
    who = e.get("actor_agency") or ""
    if e.get("actor") and e.get("actor") != "intelbus":
        who = f"{who} ({e['actor']})"
    elif e.get("actor") == "intelbus":
        who = "the bus"
    parts = [when(e["at_ms"]), e["event_type"].ljust(15), who]
    if e.get("party"):
        parts.append(f"party {e['party']}" + (f" {e['party_status']}" if e.get("party_status") else ""))
    if e.get("to"):
        parts.append("to " + ",".join(e["to"]))
    if e.get("code"):
        parts.append(e["code"])
    if e.get("minutes"):
        parts.append(f"{e['minutes']} min")
    if e.get("due_ms"):
        parts.append(f"due {when(e['due_ms'])}")
    if e.get("level"):
        parts.append(f"level {e['level']}")
    if e.get("text"):
        parts.append(repr(e["text"])[1:-1][:120])
    return "  ".join(p for p in parts if p)


def send_and_wait(command: str, path: str, body: dict, wait: float) -> int:
    settings = _settings()
    with _client(settings) as client:
        try:
            out = client.post(path, body)
        except ClientError as exc:
            return _fail(command, exc)
        item_id, command_id = out["item_id"], out["command_id"]
        deadline = time.monotonic() + wait
        while True:
            try:
                item = client.get(f"/api/v1/items/{item_id}")
                mine = [e for e in item["events"] if e.get("command_id") == command_id]
                if mine:
                    print(f"{item_id}: {item['kind'].lower().replace('_', ' ')}, now {item['status']}")
                    for e in mine:
                        print("  " + event_line(e))
                    return 0
            except ClientError as exc:
                if exc.status not in (404,):
                    return _fail(command, exc)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.3)
        print(f"{item_id}: sent; not yet processed (command {command_id}; "
              f"see `intelbus request show {item_id}` later)")
        return 0


def show_item(command: str, item_id: str) -> int:
    settings = _settings()
    with _client(settings) as client:
        try:
            item = client.get(f"/api/v1/items/{item_id}")
        except ClientError as exc:
            return _fail(command, exc)
    now = int(time.time() * 1000)
    print(f"{item['item_id']}  {item['kind']}  {item['status']}  from {item['from'] or '-'}"
          + (f"  due {when(item['due_ms'])} ({left(item['due_ms'], now)})" if item.get("due_ms") else ""))
    if item.get("summary"):
        print(f"  {item['summary']}")
    if item.get("todo"):
        print(f"  waiting for you: {item['todo']}")
    if item.get("escalated_to"):
        print(f"  escalated to {', '.join(item['escalated_to'])}")
    if item["parties"]:
        print("\n  party                              status        since                    due")
        for p in item["parties"]:
            print(f"  {p['party']:<34} {p['status']:<13} {when(p['since_ms']):<24} {when(p['due_ms'])}")
    print("\n  history")
    for e in item["events"]:
        print("  " + event_line(e))
    return 0


def show_offered(command: str, item_id: str, as_json: bool) -> int:
    """The earlier answers offered to the caller's agency on a request (each one shown is audited)."""
    import json

    settings = _settings()
    with _client(settings) as client:
        try:
            out = client.get(f"/api/v1/requests/{item_id}/offered")
        except ClientError as exc:
            return _fail(command, exc)
    if as_json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    if not out["answers"]:
        print(f"{item_id}: no earlier answers were offered to {out['agency']}")
        return 0
    print(f"{item_id}: {len(out['answers'])} earlier answer(s) offered to {out['agency']} (this reading is audited)")
    for a in out["answers"]:
        print(f"\n  {a['request_id']}  answered by {a['answered_by']} ({a['answered_by_person']}) "
              f"{when(a['answered_at_ms'])}  about {', '.join(a['identifiers']) or '-'}  {a['classification']}")
        print(f"    {a['withheld']}" if a.get("withheld") else f"    {a['findings']}")
    print(f"\n  reuse one: intelbus request answer {item_id} --findings ... --reuse REQUEST_ID")
    return 0


def parse_due(text: str) -> int:
    """'2h', '90m' (from now) or 'YYYY-MM-DD HH:MM' China Standard Time -> UTC epoch ms."""
    from sinks.feed import parse_duration

    try:
        return int((time.time() + parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a time from now (2h, 90m) or 'YYYY-MM-DD HH:MM' (CST)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=CST)
    return int(at.timestamp() * 1000)


def _wait_arg(p):
    p.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                   help="how long to wait for the workflow job's event (default 5; 0: do not wait)")


def _dispatch(p, sub_attr: str, handlers: dict):
    def run(args):
        name = getattr(args, sub_attr, None)
        if not name:
            p.print_help()
            return 2
        return handlers[name](args)
    return run


# --- intelbus hit -----------------------------------------------------------------------------

def add_hit(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (NOTE + "\n\nexamples:\n"
                "  intelbus hit report 1f0c...e2 DETAINED          the sighting region: we hold him\n"
                "  intelbus hit confirm 1f0c...e2 CONFIRMED        the record's owner: the warrant stands\n"
                "  intelbus hit confirm 1f0c...e2 NEED_TIME --minutes 30\n"
                "  intelbus hit show 1f0c...e2                     the follow-up's history\n\n"
                "Deadlines: the owner confirms within 10 minutes when the person is detained or dangerous,\n"
                "1 hour otherwise; a missed deadline sends a reminder, then escalates to the owner's parent.")
    sub = p.add_subparsers(dest="hit_command", metavar="ACTION")
    r = sub.add_parser("report", help="the sighting region reports what it did (DETAINED, OBSERVED, RELEASED, NOT_FOUND)")
    r.add_argument("hit_id")
    r.add_argument("action", choices=["DETAINED", "OBSERVED", "RELEASED", "NOT_FOUND"])
    r.add_argument("--note", default="")
    _wait_arg(r)
    c = sub.add_parser("confirm", help="the record's owner answers: CONFIRMED, NOT_VALID or NEED_TIME --minutes N")
    c.add_argument("hit_id")
    c.add_argument("answer", choices=["CONFIRMED", "NOT_VALID", "NEED_TIME"])
    c.add_argument("--minutes", type=int, help="NEED_TIME: how many more minutes")
    c.add_argument("--note", default="")
    _wait_arg(c)
    s = sub.add_parser("show", help="a hit follow-up's state and history")
    s.add_argument("hit_id")

    return _dispatch(p, "hit_command", {
        "report": lambda a: send_and_wait("hit report", f"/api/v1/hits/{a.hit_id}/report",
                                          {"action": a.action, "note": a.note}, a.wait),
        "confirm": lambda a: send_and_wait("hit confirm", f"/api/v1/hits/{a.hit_id}/confirm",
                                           {"answer": a.answer, "minutes": a.minutes, "note": a.note}, a.wait),
        "show": lambda a: show_item("hit show", a.hit_id),
    })


# --- intelbus request ---------------------------------------------------------------------------

def list_queue(command: str, all_open: bool, as_json: bool) -> int:
    import json

    settings = _settings()
    with _client(settings) as client:
        try:
            out = client.get("/api/v1/queue", all="true" if all_open else None)
        except ClientError as exc:
            return _fail(command, exc)
    if as_json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    now = out["now_ms"]
    if not out["items"]:
        print(f"nothing waits for {out['agency']}")
        return 0
    print(f"waiting for {out['agency']} ({len(out['items'])}), at {when(now)}")
    print(f"  {'item':<38} {'kind':<19} {'to do':<8} {'due (CST)':<24} {'left':>8}  from / about")
    for i in out["items"]:
        todo = i["todo"] or ("(escalated)" if i["escalated_to_you"] else "")
        mark = " OVERDUE" if i["overdue"] else ""
        print(f"  {i['item_id']:<38} {i['kind']:<19} {todo:<8} {when(i['due_ms']):<24} {left(i['due_ms'], now):>8}  "
              f"{i['from']}  {i['summary'][:60]}{mark}")
    return 0


def add_request(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (NOTE + "\n\nexamples:\n"
                "  intelbus request send --to 130822/CRIMINAL_INVESTIGATION --priority URGENT \\\n"
                "      --subject RESIDENT_ID:11010519491231002X --question '他是否仍在登记住址?'\n"
                "  intelbus request list                          what waits for your agency, with deadlines\n"
                "  intelbus request accept R-5f2a9c0d1e3b\n"
                "  intelbus request answer R-5f2a9c0d1e3b --findings '已在住址核实, 本人在家'\n"
                "  intelbus request refuse R-5f2a9c0d1e3b NOT_COMPETENT\n"
                "  intelbus request close R-5f2a9c0d1e3b --outcome '已协查完毕'   (the requester)\n"
                "  intelbus request show R-5f2a9c0d1e3b           history and each addressee's state\n"
                "  intelbus request offered R-5f2a9c0d1e3b        earlier answers offered to you (each reading audited)\n"
                "  intelbus request answer R-5f2a9c0d1e3b --findings '...' --reuse R-0c1d2e3f4a5b\n\n"
                "Deadlines by default: accepted within 1 hour, answered within 4 hours, joint action within\n"
                "24 hours; a missed one escalates up the addressee's hierarchy.")
    sub = p.add_subparsers(dest="request_command", metavar="ACTION")
    s = sub.add_parser("send", help="ask one or more agencies (REGION/BRANCH)")
    s.add_argument("--to", action="append", required=True, metavar="REGION/BRANCH", help="an addressee (repeatable)")
    s.add_argument("--priority", choices=["ROUTINE", "URGENT", "CRITICAL"], default="ROUTINE")
    s.add_argument("--subject", action="append", default=[], metavar="KIND:VALUE",
                   help="an identifier the request is about (RESIDENT_ID, PLATE, PHONE, PASSPORT; repeatable)")
    s.add_argument("--question", required=True)
    s.add_argument("--joint", action="store_true", help="ask for joint action (24 h by default)")
    s.add_argument("--classification", default="INTERNAL", choices=["PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET"])
    _wait_arg(s)
    for name, help_text in (("accept", "accept a request addressed to your agency"),
                            ("close", "close your agency's request (the requester)")):
        a = sub.add_parser(name, help=help_text)
        a.add_argument("item_id")
        if name == "close":
            a.add_argument("--outcome", default="")
        _wait_arg(a)
    a = sub.add_parser("answer", help="answer an accepted request with findings")
    a.add_argument("item_id")
    a.add_argument("--findings", required=True)
    a.add_argument("--reuse", action="append", default=[], metavar="REQUEST_ID",
                   help="an earlier request whose offered answer this reuses (audited; repeatable)")
    _wait_arg(a)
    r = sub.add_parser("refuse", help="refuse a request, with a reason")
    r.add_argument("item_id")
    r.add_argument("reason", choices=["NOT_COMPETENT", "INSUFFICIENT_INFORMATION", "NO_LEGAL_BASIS", "DUPLICATE",
                                      "NO_CAPACITY", "OTHER"])
    r.add_argument("--text", default="", help="why (required with OTHER)")
    _wait_arg(r)
    j = sub.add_parser("joint", help="report the joint action on an answered request")
    j.add_argument("item_id")
    j.add_argument("--outcome", default="")
    _wait_arg(j)
    lst = sub.add_parser("list", help="what waits for your agency: open items, deadline, time left, overdue")
    lst.add_argument("--all", action="store_true", help="also open items that wait on others")
    lst.add_argument("--json", action="store_true")
    sh = sub.add_parser("show", help="an item's history and its parties' states")
    sh.add_argument("item_id")
    o = sub.add_parser("offered", help="earlier answers offered to your agency (audited)")
    o.add_argument("item_id")
    o.add_argument("--json", action="store_true")

    def path(a, verb):
        return f"/api/v1/requests/{a.item_id}/{verb}"

    return _dispatch(p, "request_command", {
        "send": lambda a: send_and_wait("request send", "/api/v1/requests", {
            "to": a.to, "priority": a.priority, "subjects": a.subject, "question": a.question,
            "joint_action": a.joint, "classification": a.classification}, a.wait),
        "accept": lambda a: send_and_wait("request accept", path(a, "accept"), {}, a.wait),
        "answer": lambda a: send_and_wait("request answer", path(a, "answer"),
                                          {"findings": a.findings, "reuse_of": a.reuse}, a.wait),
        "refuse": lambda a: send_and_wait("request refuse", path(a, "refuse"),
                                          {"reason_code": a.reason, "text": a.text}, a.wait),
        "joint": lambda a: send_and_wait("request joint", path(a, "joint"), {"outcome": a.outcome}, a.wait),
        "close": lambda a: send_and_wait("request close", path(a, "close"), {"outcome": a.outcome}, a.wait),
        "list": lambda a: list_queue("request list", a.all, a.json),
        "show": lambda a: show_item("request show", a.item_id),
        "offered": lambda a: show_offered("request offered", a.item_id, a.json),
    })


# --- intelbus directive -------------------------------------------------------------------------

def add_directive(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (NOTE + "\n\nexamples:\n"
                "  intelbus directive issue --to 130800 --to JJJ --task '加强G45沿线卡口查控' --due 2h\n"
                "  intelbus directive issue --to 130822 --task '...' --due '2026-12-01 18:00'   (CST)\n"
                "  intelbus directive ack D-5f2a9c0d1e3b           a recipient: received (within 15 minutes)\n"
                "  intelbus directive report D-5f2a9c0d1e3b DONE\n"
                "  intelbus directive report D-5f2a9c0d1e3b CANNOT --reason '警力不足'\n"
                "  intelbus directive status D-5f2a9c0d1e3b        each recipient's state\n\n"
                "An issuer directs regions inside its own and the members of the zones it belongs to; not\n"
                "acknowledged in 15 minutes: sent again, then escalated.")
    sub = p.add_subparsers(dest="directive_command", metavar="ACTION")
    i = sub.add_parser("issue", help="direct regions or zones to act by a time")
    i.add_argument("--to", action="append", required=True, metavar="REGION|ZONE", help="a recipient (repeatable)")
    i.add_argument("--task", required=True)
    i.add_argument("--due", required=True, type=parse_due, help="2h, 90m (from now) or 'YYYY-MM-DD HH:MM' (CST)")
    i.add_argument("--classification", default="INTERNAL", choices=["PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET"])
    _wait_arg(i)
    a = sub.add_parser("ack", help="acknowledge a directive addressed to your region")
    a.add_argument("item_id")
    _wait_arg(a)
    r = sub.add_parser("report", help="report DONE, or CANNOT with a reason")
    r.add_argument("item_id")
    r.add_argument("outcome", choices=["DONE", "CANNOT"])
    r.add_argument("--reason", default="")
    _wait_arg(r)
    s = sub.add_parser("status", help="each recipient's state and the directive's history")
    s.add_argument("item_id")

    return _dispatch(p, "directive_command", {
        "issue": lambda a: send_and_wait("directive issue", "/api/v1/directives", {
            "to": a.to, "task": a.task, "due_at": a.due, "classification": a.classification}, a.wait),
        "ack": lambda a: send_and_wait("directive ack", f"/api/v1/directives/{a.item_id}/ack", {}, a.wait),
        "report": lambda a: send_and_wait("directive report", f"/api/v1/directives/{a.item_id}/report",
                                          {"outcome": a.outcome, "reason": a.reason}, a.wait),
        "status": lambda a: show_item("directive status", a.item_id),
    })

