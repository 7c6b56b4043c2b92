// The queue page: what waits for my agency (GET /api/v1/queue), a live countdown per item, overdue
// items marked, one-click accept / confirm / acknowledge (POST with the X-CSRF-Token, through IB.api).
"use strict";

(() => {
  const KIND = { HIT_FOLLOW_UP: "命中核查", ASSISTANCE_REQUEST: "协查请求", DIRECTIVE: "指令" };
  const TODO = { accept: "接收 accept", answer: "反馈 answer", close: "办结 close", confirm: "确认 confirm",
                 report: "报告 report", ack: "签收 acknowledge" };
  // the one-click actions: todo -> [button text, method path, body]
  const ONE_CLICK = {
    accept: ["接收 Accept", (id) => `/api/v1/requests/${encodeURIComponent(id)}/accept`, {}],
    confirm: ["确认 Confirm", (id) => `/api/v1/hits/${encodeURIComponent(id)}/confirm`, { answer: "CONFIRMED" }],
    ack: ["签收 Acknowledge", (id) => `/api/v1/directives/${encodeURIComponent(id)}/ack`, {}],
  };
  let items = [], skew = 0, selected = null;
  const $ = (id) => document.getElementById(id);
  const el = (...a) => IB.el(...a);

  function left(due) {
    if (!due) return ["-", false, false];
    const ms = due - (Date.now() + skew);
    const s = Math.floor(Math.abs(ms) / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const text = (ms < 0 ? "超时 -" : "") + (h ? `${h}h${String(m).padStart(2, "0")}m${String(sec).padStart(2, "0")}s`
                                                : `${m}m${String(sec).padStart(2, "0")}s`);
    return [text, ms < 0, ms >= 0 && ms < 10 * 60 * 1000];
  }

  function tick() {
    for (const row of document.querySelectorAll("tr.item")) {
      const it = items.find((i) => i.item_id === row.dataset.id);
      if (!it) continue;
      const [text, over, soon] = left(it.due_ms);
      const cell = row.querySelector("td.left");
      cell.textContent = text;
      cell.classList.toggle("soon", soon);
      row.classList.toggle("overdue", over && !!it.todo);
    }
  }

  async function act(it, button) {
    const [, path, body] = ONE_CLICK[it.todo];
    button.disabled = true;
    try {
      const out = await IB.api("POST", path(it.item_id), body);
      $("msg").className = "msg";
      $("msg").textContent = `已发送 sent: ${it.item_id} (${out.command}, ${out.command_id})`;
      setTimeout(load, 1500);
      setTimeout(() => show(it.item_id), 1500);
    } catch (e) {
      button.disabled = false;
      $("msg").className = "msg bad";
      $("msg").textContent = `未发送 refused: ${e.detail || e.message}`;
    }
  }

  function render() {
    const rows = items.map((it) => {
      const one = ONE_CLICK[it.todo];
      const button = one ? el("button", { type: "button", class: "primary", "data-action": it.todo, text: one[0] }) : null;
      if (button) button.addEventListener("click", (ev) => { ev.stopPropagation(); act(it, button); });
      const todo = it.todo ? el("span", { class: "todo", text: TODO[it.todo] || it.todo })
                           : (it.escalated_to_you ? el("span", { class: "escalated", text: "已升级 escalated" }) : "-");
      const about = [it.code, it.summary].filter(Boolean).join(" · ");
      const tr = el("tr", { class: "item" + (selected === it.item_id ? " selected" : ""), "data-id": it.item_id },
        el("td", { class: "id", text: it.item_id }),
        el("td", { text: `${KIND[it.kind] || ""} ${it.kind}` }),
        el("td", {}, todo),
        el("td", { text: it.from ? (it.from.includes("/") ? `${IB.regionName(it.from.split("/")[0])} ${it.from}` : IB.region(it.from)) : "-" }),
        el("td", { text: about || "-" }),
        el("td", { text: it.due_ms ? IB.cst(it.due_ms) : "-" }),
        el("td", { class: "left" }),
        el("td", {}, button || (it.todo ? el("span", { class: "counter", text: "CLI: intelbus " + (it.kind === "DIRECTIVE" ? "directive" : it.kind === "HIT_FOLLOW_UP" ? "hit" : "request") }) : "")));
      tr.addEventListener("click", () => show(it.item_id));
      return tr;
    });
    $("rows").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colspan: "8", class: "empty", text: "没有待办 nothing waits for my agency" }))]));
    tick();
  }

  async function load() {
    try {
      const out = await IB.api("GET", "/api/v1/queue" + ($("show-all").checked ? "?all=true" : ""));
      skew = out.now_ms - Date.now();
      items = out.items;
      $("title").textContent = `待办事项 Items waiting for ${out.agency} (${items.length})`;
      $("updated").textContent = `更新于 updated ${IB.cst(out.now_ms)}`;
      render();
    } catch (e) {
      $("msg").className = "msg bad";
      $("msg").textContent = `队列不可用 queue unavailable: ${e.detail || e.message}`;
    }
  }

  async function show(id) {
    selected = id;
    for (const r of document.querySelectorAll("tr.item")) r.classList.toggle("selected", r.dataset.id === id);
    $("item-id").textContent = id;
    try {
      const it = await IB.api("GET", `/api/v1/items/${encodeURIComponent(id)}`);
      const parts = it.parties.length ? el("table", {},
        el("tr", {}, el("th", { text: "单位 party" }), el("th", { text: "状态 status" }), el("th", { text: "期限 due" })),
        ...it.parties.map((p) => el("tr", {}, el("td", { text: p.party }), el("td", { text: p.status }),
                                    el("td", { text: p.due_ms ? IB.cst(p.due_ms) : "-" })))) : null;
      const evs = it.events.map((e) => el("div", { class: "ev" },
        el("span", { class: "t", text: IB.cst(e.at_ms) }), el("span", { class: "type", text: e.event_type }),
        el("span", { text: [e.actor === "intelbus" ? "系统 the bus" : [e.actor_agency, e.actor].filter(Boolean).join(" "),
                            e.party ? `→ ${e.party} ${e.party_status || ""}` : "", (e.to || []).length ? `to ${e.to.join(",")}` : "",
                            e.code, e.text, e.due_ms ? `期限 due ${IB.cst(e.due_ms)}` : ""].filter(Boolean).join(" · ") })));
      $("history").replaceChildren(el("div", { text: `${it.kind} · ${it.status}${it.summary ? " · " + it.summary : ""}` }),
                                   ...(parts ? [parts] : []), ...evs);
    } catch (e) {
      $("history").replaceChildren(el("div", { class: "empty", text: e.detail || e.message }));
    }
  }

  IB.start().then(() => {
    $("show-all").addEventListener("change", load);
    load();
    setInterval(tick, 1000);
    setInterval(load, 10000);
  });
})();
