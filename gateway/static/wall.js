// The command-center wall: hits arriving live over Server-Sent Events (GET /api/v1/events), newest first;
// beside them, the follow-ups addressed to the agency (workflow items of the same stream) with a countdown.
// The browser's EventSource reconnects by itself and sends Last-Event-ID, so the gateway resumes after the
// last item shown (no gap); a hit already on the wall is never shown twice (and is counted, should it come).
"use strict";

const PURPOSE = "指挥中心值守 live wall";
const MAX_CARDS = 300;
// how far back a wall opened now starts (the page's ?since=, e.g. 2h; the gateway caps and checks it)
const SINCE = /^\d{1,4}[smhd]$/.test(new URLSearchParams(location.search).get("since") || "")
  ? new URLSearchParams(location.search).get("since") : "10m";
const STALE_MS = 15000;      // heartbeats come every 5 s
const FRESH_MS = 120000;     // a hit detected this recently gets the flash and the beep
const wall = { hits: new Map(), seen: new Set(), queue: [], flushing: false, received: 0, arrived: {}, es: null, opened: false, lastBeat: 0, lastItem: "", duplicates: 0, alerts: 0,
               audio: null, lastBeep: 0, me: null, unseen: 0 };

function norm(v) {
  return String(v || "").toUpperCase().replace(/[\s.\-]/g, "").replace(/^\+?86(?=1\d{10}$)/, "");
}
function sameIdentifier(value, matched) {
  const a = norm(value), b = norm(matched);
  if (!a || !b) return false;
  if (a === b) return true;
  // an old 15-digit resident ID against its 18-digit form
  return a.length === 15 && b.length === 18 && a.slice(0, 6) + "19" + a.slice(6) === b.slice(0, 17);
}

function dangerOf(h) {
  const r = h.record || {};
  if (r.danger_level) return r.danger_level;
  return { CRITICAL: "HIGH", URGENT: "MEDIUM", ROUTINE: "LOW" }[r.priority] || "";
}

// --- a card: the owner's record and the sighting side by side, the matched identifier marked in both -------

function recordSection(which, kind, r, regionCode, matched) {
  const { el, zh, label, cst, region } = IB;
  let marked = false;
  const idNode = (value) => {
    if (sameIdentifier(value, matched.value)) { marked = true; return el("mark", { class: "matched", text: value }); }
    return document.createTextNode(value);
  };
  const rows = [];
  const add = (name, ...value) => { if (value.length && value[0] !== undefined && value[0] !== "") rows.push([name, value]); };
  const loc = r.location || {};
  if (kind === "WANTED") {
    const p = r.person || {};
    add("类别 kind", `${zh("record_kind", kind)} · ${r.action || ""}`);
    add("记录方 owner", region(regionCode));
    add("姓名 name", [p.name, zh("gender", p.gender), p.birth_date].filter((x) => x && x !== "-").join(" · ") || "-");
    if (p.id_number) add("证件 ID", `${zh("id_kind", p.id_type === "RESIDENT_ID" ? "RESIDENT_ID" : p.id_type)} `, idNode(p.id_number));
    add("罪名 offence", r.offence ? `${IB.codes().offences[r.offence] || ""} ${r.offence}` : "");
    add("危险 danger", r.danger_level ? label("danger", r.danger_level) : "");
    add("逮捕令 warrant", r.warrant_ref || "");
  } else if (kind === "ALERT") {
    add("类别 kind", `${label("alert_type", r.alert_type)} · ${label("priority", r.priority)}`);
    add("发布方 owner", region(regionCode));
    add("标题 title", r.title || "");
    add("有效期 valid", r.valid_until ? cst(r.valid_until) : "");
  } else {
    add("类别 kind", `${zh("record_kind", "INCIDENT")} · ${label("incident_type", r.incident_type)}`);
    add(which === "owner" ? "记录方 owner" : "发生地 place", region(loc.region || regionCode));
    add("地址 address", loc.address || "");
    add("标题 title", r.title || "");
  }
  for (const p of (kind === "WANTED" ? [] : r.persons || [])) {
    add(`人员 ${zh("person_role", p.role)}`, `${p.name || ""} `, idNode(p.id_number || ""));
  }
  for (const v of r.vehicles || []) add("车辆 vehicle", idNode(v.plate || ""), v.color ? ` ${v.color}` : "");
  for (const ph of r.phones || []) add("手机 phone", idNode(ph));
  add("编号 ref", `${r.source_system || ""}/${r.source_ref || ""} 版本 rev ${r.revision || 1}`);
  add("时间 time", cst(r.occurred_at));
  if (!marked && matched.value) {
    rows.push(["比中 matched", [el("mark", { class: "matched", text: matched.value })]]);
  }
  return el("section", { class: which },
    el("h3", { text: which === "owner" ? "记录方记录 owner's record" : "发现 sighting (触发事件 trigger)" }),
    el("table", {}, el("tbody", {}, rows.map(([name, value]) => el("tr", {}, el("th", { text: name }), el("td", {}, value))))));
}

function hitCard(h) {
  const { el, zh, label, cst, region } = IB;
  const matched = h.matched_on || {};
  const danger = dangerOf(h);
  const detected = IB.toDate(h.detected_at);
  const card = el("article", { class: "hit-card", "data-hit-id": h.hit_id, "data-hit-type": h.hit_type,
                               "data-detected": detected ? detected.getTime() : 0 },
    el("div", { class: `banner cls-${h.classification}`, text: `${label("classification", h.classification)}` }),
    el("div", { class: "head" },
      el("span", { class: `type ${h.hit_type}`, text: label("hit_type", h.hit_type) }),
      danger ? el("span", { class: `danger-${danger}`, text: `危险 ${label("danger", danger)}` }) : null,
      el("span", {}, `比中 ${zh("id_kind", matched.kind)} `, el("mark", { class: "matched", text: matched.value || "" })),
      el("span", { text: `${region(h.owner_region)} → ${region(h.hit_region)}` }),
      el("span", { class: "when", text: `发现 ${cst(h.detected_at)}` })),
    el("div", { class: "pair" },
      recordSection("owner", h.record_kind, h.record || {}, h.owner_region, matched),
      recordSection("seen", h.trigger_kind, h.trigger || {}, h.hit_region, matched)),
    el("div", { class: "foot", text: `命中 ${h.hit_id} · 记录 ${h.record_key || ""} · 通知 ${(h.notify_regions || []).join(", ")}` }));
  return card;
}

// --- arriving hits -------------------------------------------------------------------------------------

// Items are queued and put on the wall in batches (a catch-up after a reconnect can bring thousands at once).
function onHit(h) {
  if (wall.seen.has(h.hit_id)) { wall.duplicates += 1; document.body.dataset.duplicates = wall.duplicates; return; }
  wall.seen.add(h.hit_id);
  wall.received += 1;
  wall.arrived[h.hit_id] = Date.now();
  wall.queue.push(h);
  if (!wall.flushing) { wall.flushing = true; setTimeout(flush, 100); }
}

function flush() {
  wall.flushing = false;
  const batch = wall.queue.splice(0);
  if (!batch.length) return;
  const list = document.getElementById("hits");
  const at = (h) => { const d = IB.toDate(h.detected_at); return d ? d.getTime() : 0; };
  batch.sort((a, b) => at(a) - at(b)); // oldest first: each goes on top of the ones before it
  let fresh = 0;
  for (const h of batch.slice(-MAX_CARDS)) { // the older ones would fall off the wall at once
    wall.hits.set(h.hit_id, h);
    const card = hitCard(h);
    const first = list.querySelector(".hit-card");
    if (!first || Number(first.dataset.detected) <= at(h)) {
      list.insertBefore(card, first);
    } else { // older than the newest on the wall (rare): its place in time
      const after = [...list.querySelectorAll(".hit-card")].find((c) => Number(c.dataset.detected) < at(h));
      list.insertBefore(card, after || null);
    }
    addRegionOption(h.owner_region); addRegionOption(h.hit_region);
    if (Date.now() - at(h) < FRESH_MS) {
      fresh += 1;
      card.classList.add("fresh");
      setTimeout(() => card.classList.remove("fresh"), 4000);
    }
  }
  document.getElementById("empty").classList.add("hidden");
  const cards = list.querySelectorAll(".hit-card");
  for (let i = MAX_CARDS; i < cards.length; i++) { wall.hits.delete(cards[i].dataset.hitId); cards[i].remove(); }
  if (fresh) {
    beep();
    if (document.hidden) { wall.unseen += fresh; document.title = `(${wall.unseen}) 新命中 · intelbus`; }
  }
  applyFilters();
  drawPlot();
}

function beep() {
  const ctx = wall.audio;
  if (!ctx || ctx.state !== "running" || Date.now() - wall.lastBeep < 1000) return;
  wall.lastBeep = Date.now();
  [0, 0.22].forEach((offset) => {
    const osc = ctx.createOscillator(), gain = ctx.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.2, ctx.currentTime + offset);
    gain.gain.exponentialRampToValueAtTime(0.001, ctx.currentTime + offset + 0.18);
    osc.connect(gain).connect(ctx.destination);
    osc.start(ctx.currentTime + offset); osc.stop(ctx.currentTime + offset + 0.2);
  });
}

function setupSound() {
  const button = document.getElementById("sound");
  const show = () => { button.textContent = wall.audio && wall.audio.state === "running" ? "♪ 提示音 开 sound on" : "♪ 提示音 关 sound off"; };
  try { wall.audio = new AudioContext(); } catch (e) { wall.audio = null; }
  button.addEventListener("click", async () => {
    if (!wall.audio) wall.audio = new AudioContext();
    if (wall.audio.state === "running") await wall.audio.suspend(); else { await wall.audio.resume(); beep(); }
    show();
  });
  show();
}

// --- filters -------------------------------------------------------------------------------------------

function within(code, selected) {
  const prefix = selected.endsWith("0000") ? selected.slice(0, 2) : selected.endsWith("00") ? selected.slice(0, 4) : selected;
  return String(code || "").startsWith(prefix);
}
function addRegionOption(code) {
  const select = document.getElementById("f-region");
  if (!code || select.querySelector(`option[value="${code}"]`)) return;
  select.append(IB.el("option", { value: code, text: IB.region(code) }));
}
function visible(h) {
  const type = document.getElementById("f-type").value;
  const reg = document.getElementById("f-region").value;
  const danger = document.getElementById("f-danger").value;
  const age = Number(document.getElementById("f-age").value);
  if (type && h.hit_type !== type) return false;
  if (reg && !within(h.owner_region, reg) && !within(h.hit_region, reg)) return false;
  const d = dangerOf(h);
  if (danger === "HIGH" && d !== "HIGH") return false;
  if (danger === "MEDIUM" && d !== "HIGH" && d !== "MEDIUM") return false;
  const at = IB.toDate(h.detected_at);
  if (age && at && Date.now() - at.getTime() > age * 1000) return false;
  return true;
}
function applyFilters() {
  let shown = 0;
  const classes = [];
  for (const card of document.querySelectorAll("#hits .hit-card")) {
    const h = wall.hits.get(card.dataset.hitId);
    const ok = h && visible(h);
    card.classList.toggle("hidden", !ok);
    if (ok) { shown += 1; classes.push(h.classification); }
  }
  document.getElementById("count").textContent = `${shown} / ${wall.hits.size} 条命中 hits (共收到 ${wall.received} received)` +
    (wall.alerts ? ` · ${wall.alerts} 条协查 alerts` : "");
  IB.setBanner(IB.maxClassification(["INTERNAL", ...classes]));
}

// --- the places plot -----------------------------------------------------------------------------------

function drawPlot() {
  const points = [], links = [];
  const shown = [...document.querySelectorAll("#hits .hit-card:not(.hidden)")].slice(0, 60);
  for (const card of shown) {
    const h = wall.hits.get(card.dataset.hitId);
    if (!h) continue;
    const rec = h.record || {}, trg = h.trigger || {};
    const o = Plot.place(h.owner_region, h.record_kind === "INCIDENT" ? rec.location : null);
    const s = Plot.place(h.hit_region, trg.location);
    points.push({ ...o, cls: "owner", label: IB.regionName(h.owner_region), title: `记录方 ${IB.region(h.owner_region)}` });
    points.push({ ...s, cls: "seen", label: IB.regionName(h.hit_region), title: `发现地 ${IB.region(h.hit_region)}` });
    links.push([points.length - 2, points.length - 1]);
  }
  if (!points.length && wall.me) {
    points.push({ ...Plot.place(wall.me.agency.region), cls: "seen", label: IB.regionName(wall.me.agency.region) });
  }
  Plot.draw(document.getElementById("plot"), points, { links });
}

// --- follow-ups: workflow items addressed to my agency (event: workflow) ---------------------------------
// The gateway sends every workflow event the agency may see (the workflow API's rule); the panel keeps the
// items one addressed to this agency or its region (a new request or directive, a hit to confirm, a reminder,
// an escalation), the latest per item, with a countdown to the deadline; /queue is where they are acted on.

const FU_KIND = { HIT_FOLLOW_UP: "命中核查", ASSISTANCE_REQUEST: "协查请求", DIRECTIVE: "指令" };
const FU_NEWS = { OPENED: "待核查 to confirm", SENT: "新协查 new request", ISSUED: "新指令 new directive",
                  REMINDED: "催办 reminder", RESENT: "重发 sent again", ESCALATED: "升级 escalated",
                  ANSWERS_OFFERED: "可复用反馈 earlier answers", STALE_LISTING: "在逃信息待撤销 stale listing" };
const FU_DONE = new Set(["CLOSED", "COMPLETED", "CANCELLED", "NOT_VALID"]);
const FU_MAX = 60;
const followups = { items: new Map(), seen: new Set(), others: 0, drawing: false };

function forMe(w) {
  const me = wall.me;
  return !!me && (w.to || []).some((t) => t === `${me.agency.region}/${me.agency.branch}` || t === me.agency.region);
}

function onWorkflow(w) {
  if (followups.seen.has(w.event_id)) return; // the same transition published twice (a replayed command)
  followups.seen.add(w.event_id);
  const have = followups.items.get(w.item_id);
  if (FU_NEWS[w.event_type] && forMe(w)) {
    followups.items.set(w.item_id, { ...w, due: w.due_ms, fresh: 1, handled: false });
  } else if (have) { // a later step of an item on the panel: its new deadline, or done with (by us or anyone)
    const mine = w.party && forMe({ to: [w.party] });
    if (w.event_type === "NEED_TIME" && w.due_ms) have.due = w.due_ms;
    if (FU_DONE.has(w.status) || (mine && w.party_status && w.party_status !== "SENT") ||
        (have.item_kind === "HIT_FOLLOW_UP" && ["CONFIRMED", "NOT_VALID", "ACTION_REPORTED"].includes(w.event_type) && mine)) {
      have.handled = true;
      have.handled_by = w.event_type;
    }
  } else {
    followups.others += 1;
  }
  // drawn in batches: a province's area can bring hundreds of workflow events a second
  if (!followups.drawing) { followups.drawing = true; setTimeout(() => { followups.drawing = false; drawFollowups(); }, 200); }
}

const FU_SENT = new Set(["SENT", "ISSUED", "RESENT", "ANSWERS_OFFERED"]);
function tier(w) { return FU_SENT.has(w.event_type) ? 0 : 1; }

function countdown(due) {
  if (!due) return ["", false, false];
  const ms = due - Date.now();
  const s = Math.floor(Math.abs(ms) / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const text = (ms < 0 ? "超时 -" : "剩 ") + (h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`);
  return [text, ms < 0, ms >= 0 && ms < 10 * 60 * 1000];
}

function drawFollowups() {
  const { el, cst, region } = IB;
  const list = document.getElementById("followups");
  // requests and directives sent to this agency before the bus's own reminders and escalations (a storm of
  // escalations must not push a new request off the panel), newest first when trimming; shown: the open
  // ones first, requests and directives on top, the nearest deadline first; then the handled ones
  const keep = [...followups.items.values()].sort((a, b) => (tier(a) - tier(b)) || (b.at_ms - a.at_ms));
  for (const gone of keep.slice(FU_MAX)) followups.items.delete(gone.item_id);
  const items = keep.slice(0, FU_MAX);
  items.sort((a, b) => (a.handled - b.handled) || (tier(a) - tier(b)) ||
                       (a.handled ? b.at_ms - a.at_ms : (a.due || Infinity) - (b.due || Infinity)));
  list.replaceChildren(...items.map((w) => {
    const from = w.actor_agency || (w.party ? w.party : "");
    const li = el("li", { "data-item-id": w.item_id, "data-event-type": w.event_type, "data-due": w.due || "",
                          class: w.handled ? "handled" : (w.fresh ? "fresh" : "") },
      el("a", { href: "/queue", title: `在待办队列中办理 act on ${w.item_id} in the queue` },
        el("span", { class: "left" }),
        el("span", { class: `what ${w.event_type}`, text: FU_NEWS[w.event_type] || w.event_type }),
        el("span", { text: `${FU_KIND[w.item_kind] || w.item_kind} ${w.code ? IB.label("priority", w.code) : ""}` }),
        el("div", { class: "sub", text: [w.text || "", from ? `来自 from ${region(from.split("/")[0])}${from.includes("/") ? "/" + from.split("/")[1] : ""}` : "",
                                         w.due ? `期限 due ${cst(w.due)}` : "", w.handled ? `已处理 ${w.handled_by}` : "",
                                         w.item_id].filter(Boolean).join(" · ") })));
    w.fresh = 0; // flashes once, when it first shows
    return li;
  }));
  tickFollowups();
  const open = items.filter((w) => !w.handled).length;
  document.getElementById("fu-count").textContent = open ? `${open} 项待办 open` : "";
  document.getElementById("fu-empty").classList.toggle("hidden", items.length > 0);
  document.getElementById("fu-others").textContent = followups.others
    ? `另有 ${followups.others} 条辖区内流转 other workflow events in your area` : "";
}

function tickFollowups() {
  for (const li of document.querySelectorAll("#followups li")) {
    const w = followups.items.get(li.dataset.itemId);
    if (!w) continue;
    const [text, over, soon] = w.handled ? ["", false, false] : countdown(w.due);
    const cell = li.querySelector(".left");
    cell.textContent = text;
    cell.classList.toggle("soon", soon);
    li.classList.toggle("overdue", over);
  }
}

// --- the connection ------------------------------------------------------------------------------------

function connect() {
  // a new EventSource (after one the server refused) resumes where the wall was through last_event_id
  const resume = wall.lastItem ? `&last_event_id=${encodeURIComponent(wall.lastItem)}` : "";
  const url = `/api/v1/events?purpose=${encodeURIComponent(PURPOSE)}&since=${SINCE}${resume}`;
  const es = new EventSource(url, { withCredentials: true });
  wall.es = es;
  es.addEventListener("open", () => { wall.opened = true; wall.lastBeat = Date.now(); showConnection(); });
  es.addEventListener("hit", (e) => { wall.lastBeat = Date.now(); wall.lastItem = e.lastEventId; onHit(JSON.parse(e.data)); });
  es.addEventListener("alert", (e) => { wall.lastBeat = Date.now(); wall.lastItem = e.lastEventId; wall.alerts += 1; applyFilters(); });
  es.addEventListener("workflow", (e) => { wall.lastBeat = Date.now(); wall.lastItem = e.lastEventId; onWorkflow(JSON.parse(e.data)); });
  es.addEventListener("heartbeat", () => {
    wall.lastBeat = Date.now();
    // a heartbeat comes when the gateway has nothing more to send: the wall has caught up
    document.getElementById("conn").dataset.heartbeats = Number(document.getElementById("conn").dataset.heartbeats || 0) + 1;
    showConnection();
  });
  es.addEventListener("error", async () => {
    showConnection();
    if (es.readyState !== EventSource.CLOSED) return; // the browser retries by itself (with Last-Event-ID)
    // refused outright (an HTTP error): logged out, or the gateway answered an error; try again shortly
    try { await IB.api("GET", "/api/v1/whoami"); } catch (e) { if (e.status === 401) return; }
    setTimeout(() => { if (wall.es === es) connect(); }, 3000);
  });
}

function showConnection() {
  const conn = document.getElementById("conn");
  const es = wall.es;
  let cls, text;
  if (!es || es.readyState === EventSource.CONNECTING) {
    [cls, text] = wall.opened ? ["reconnecting", "重连中 reconnecting"] : ["connecting", "连接中 connecting"];
  } else if (es.readyState === EventSource.OPEN) {
    [cls, text] = Date.now() - wall.lastBeat > STALE_MS ? ["stale", "无心跳 no heartbeat"] : ["connected", "已连接 connected"];
  } else {
    [cls, text] = ["closed", "已断开 disconnected"];
  }
  conn.className = `conn ${cls}`;
  conn.textContent = text;
  conn.dataset.state = cls;
  const age = wall.lastBeat ? Math.round((Date.now() - wall.lastBeat) / 1000) : null;
  document.getElementById("beat").textContent = age === null ? "" : `心跳 ${age} 秒前 heartbeat ${age}s ago`;
}

async function main() {
  let me;
  try { me = await IB.start(); } catch (e) { return; } // not logged in: IB.api went to /login
  wall.me = me;
  document.body.dataset.duplicates = "0";
  addRegionOption(me.agency.region);
  for (const id of ["f-type", "f-region", "f-danger", "f-age"]) {
    document.getElementById(id).addEventListener("change", () => { applyFilters(); drawPlot(); });
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) { wall.unseen = 0; document.title = "指挥中心 命中墙 · intelbus"; } });
  setupSound();
  drawPlot();
  if (!me.may.includes("feed")) {
    document.getElementById("empty").textContent = "您的角色不能查看实时命中 (role command_center or analyst required for feed)";
    return;
  }
  connect();
  drawFollowups();
  setInterval(() => { showConnection(); tickFollowups(); if (document.getElementById("f-age").value !== "0") applyFilters(); }, 1000);
}

document.addEventListener("DOMContentLoaded", main);
