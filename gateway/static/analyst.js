// The analyst pages: a trail (person, plate or phone), hits between region pairs, time-to-hit.
// Every query states its purpose (the button stays disabled without one); results page by page;
// exports (CSV, JSON) come from the gateway's export route, audited there as exports.
"use strict";

const PAGE = 100;
const an = { me: null, queries: {}, last: null, offset: 0 };

// Datetime parameters are UTC on the server; people type China Standard Time.
function cstInputToUtc(value) {
  if (!value) return null;
  const withSeconds = value.length === 16 ? value + ":00" : value; // "YYYY-MM-DDTHH:MM" without seconds
  const d = new Date(withSeconds + "+08:00");
  if (isNaN(d)) return null;
  return d.toISOString().slice(0, 19).replace("T", " ");
}

function renderParams() {
  const q = an.queries[document.getElementById("query").value];
  const box = document.getElementById("params");
  box.replaceChildren();
  if (!q) return;
  for (const p of q.params) {
    const input = p.type === "datetime"
      ? IB.el("input", { type: "datetime-local", step: "1", id: `p-${p.name}`, "data-param": p.name, "data-type": p.type })
      : IB.el("input", { id: `p-${p.name}`, "data-param": p.name, "data-type": p.type,
                         placeholder: p.default || "", required: p.name === "id" });
    const name = p.name === "id" ? "身份证号/车牌/手机 id" : p.name === "type" ? "命中类型 type" : p.name;
    box.append(IB.el("label", { title: p.help }, `${name}${p.type === "datetime" ? " (CST)" : ""}`, input));
  }
  box.append(IB.el("label", { title: "narrow to a region inside your agency's" }, "地区 region (可选 optional)",
    IB.el("input", { id: "p-region", placeholder: an.me ? an.me.agency.region : "", size: 8 })));
  updateButtons();
}

function body() {
  const params = {};
  for (const input of document.querySelectorAll("#params [data-param]")) {
    const v = input.value.trim();
    if (!v) continue;
    params[input.dataset.param] = input.dataset.type === "datetime" ? cstInputToUtc(v) : v;
  }
  const region = document.getElementById("p-region").value.trim();
  return { params, purpose: document.getElementById("purpose").value.trim(), region: region || null };
}

function updateButtons() {
  const purpose = document.getElementById("purpose").value.trim();
  document.getElementById("run").disabled = !purpose;
  const mayExport = an.me && an.me.may.includes("export");
  for (const id of ["export-csv", "export-json"]) {
    const b = document.getElementById(id);
    b.disabled = !purpose || !mayExport;
    b.title = mayExport ? "导出全部结果 (记入审计 audited as an export)" : "role analyst required for export";
  }
}

function status(text, bad = false) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("bad", bad);
}

async function run(offset = 0) {
  const name = document.getElementById("query").value;
  const b = body();
  status("查询中 running…");
  try {
    const out = await IB.api("POST", `/api/v1/queries/${encodeURIComponent(name)}`, { ...b, limit: PAGE, offset });
    an.last = { name, body: b, out };
    status(`${out.rows.length} 行 rows (${out.offset + 1}–${out.offset + out.rows.length}${out.has_more ? "+" : ""}) · ${out.elapsed_ms} ms · 地区 ${IB.region(out.region)} · 已审计 audited`);
    show(name, out);
  } catch (e) {
    status(`查询被拒绝或失败 refused or failed: ${e.detail || e.message}`, true);
  }
}

function cell(column, value) {
  if (value === null || value === undefined) return "";
  if (IB.looksLikeTime(value)) return IB.cst(value);
  if (/region|seen_in/.test(column) && /^\d{6}$/.test(String(value))) return IB.region(String(value));
  if (column === "hit_type") return IB.label("hit_type", value);
  if (column === "type") return IB.label("incident_type", value);
  if (column === "matched_on") return IB.label("id_kind", value);
  return Array.isArray(value) ? value.join(", ") : String(value);
}

function show(name, out) {
  const { el } = IB;
  const results = document.getElementById("results");
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", id: "prev", disabled: out.offset === 0, onclick: () => run(Math.max(0, out.offset - PAGE)), text: "上一页 previous" }),
    el("span", { text: `第 ${Math.floor(out.offset / PAGE) + 1} 页 page` }),
    el("button", { type: "button", id: "next", disabled: !out.has_more, onclick: () => run(out.next_offset), text: "下一页 next" }));
  const table = el("table", { class: "grid", id: "result-table" },
    el("thead", {}, el("tr", {}, out.columns.map((c) => el("th", { text: c })))),
    el("tbody", {}, out.rows.map((r) => el("tr", {}, r.map((v, i) => el("td", { text: cell(out.columns[i], v) }))))));
  const parts = [];
  if (name === "trail") parts.push(trailView(out));
  parts.push(pager, out.rows.length ? table : el("div", { class: "empty", text: "无结果 no rows" }));
  results.replaceChildren(...parts);
}

// A trail: a timeline and the places in time order.
function trailView(out) {
  const { el } = IB;
  const col = (r, c) => r[out.columns.indexOf(c)];
  const items = out.rows.map((r) => el("li", {},
    el("div", { class: "t", text: IB.cst(col(r, "occurred_at")) }),
    el("div", { text: `${IB.region(col(r, "region"))} · ${IB.label(col(r, "kind") === "incident" ? "incident_type" : "alert_type", col(r, "type"))}` }),
    el("div", { class: "t", text: [col(r, "title"), col(r, "address"), col(r, "role")].filter(Boolean).join(" · ") })));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "plot");
  svg.id = "trail-plot";
  const points = out.rows.map((r) => ({ ...Plot.place(col(r, "region")), cls: "seen", label: IB.regionName(col(r, "region")),
                                        title: `${IB.cst(col(r, "occurred_at"))} ${IB.region(col(r, "region"))}` }));
  Plot.draw(svg, points, { path: true });
  return el("div", { class: "trail-view" },
    el("div", { class: "panel" }, el("h2", { text: "时间线 Timeline (CST)" }),
       items.length ? el("ol", { class: "timeline", id: "timeline" }, items) : el("div", { class: "empty", text: "无轨迹 no trail" })),
    el("div", { class: "panel" }, el("h2", { text: "地点 Places (按时间 in time order)" }), svg));
}

async function main() {
  try { an.me = await IB.start(); } catch (e) { return; }
  const list = await IB.api("GET", "/api/v1/queries");
  an.queries = Object.fromEntries(list.map((q) => [q.name, q]));
  const select = document.getElementById("query");
  for (const q of list) {
    if (!select.querySelector(`option[value="${q.name}"]`)) select.append(IB.el("option", { value: q.name, text: `${q.name}: ${q.description}` }));
  }
  const wanted = new URLSearchParams(location.search).get("query");
  if (wanted && an.queries[wanted]) select.value = wanted;
  select.addEventListener("change", () => { renderParams(); document.getElementById("results").replaceChildren(); });
  document.getElementById("purpose").addEventListener("input", updateButtons);
  document.getElementById("query-form").addEventListener("submit", (ev) => { ev.preventDefault(); if (!document.getElementById("run").disabled) run(0); });
  const exportAs = (format) => IB.exportQuery(document.getElementById("query").value, format, body(),
                                              document.getElementById("status"));
  document.getElementById("export-csv").addEventListener("click", () => exportAs("csv"));
  document.getElementById("export-json").addEventListener("click", () => exportAs("json"));
  renderParams();
}

document.addEventListener("DOMContentLoaded", main);
