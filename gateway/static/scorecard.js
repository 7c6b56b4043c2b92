// The scorecard (DOMAIN.md section 10, "Accountability"): per agency and month, requests received, the
// shares accepted and answered within their deadlines, response times, escalations, refusals by reason,
// hits confirmed on time and stale listings. One named query (scorecard), run through the gateway with a
// purpose (audited); the CSV comes from the gateway's export route, audited as an export. The chart is
// SVG drawn here, no library. Definitions: docs/workflows.md, "Scorecard".
"use strict";

const sc = { me: null, out: null };
const NS = "http://www.w3.org/2000/svg";
const REASONS = ["not_competent", "insufficient_information", "no_legal_basis", "duplicate", "no_capacity", "other"];

// A calendar month in China Standard Time as the UTC bounds the query takes ("2026-11" -> 2026-10-31 16:00:00 ...).
function monthBounds(month) {
  const m = /^(\d{4})-(\d{2})$/.exec(month || "");
  if (!m) return null;
  const y = Number(m[1]), mo = Number(m[2]);
  const utc = (yy, mm) => new Date(Date.UTC(yy, mm - 1, 1) - 8 * 3600 * 1000).toISOString().slice(0, 19).replace("T", " ");
  return { from: utc(y, mo), to: mo === 12 ? utc(y + 1, 1) : utc(y, mo + 1) };
}

function currentMonthCst() {
  const d = new Date(Date.now() + 8 * 3600 * 1000);
  return d.toISOString().slice(0, 7);
}

function body() {
  const bounds = monthBounds(document.getElementById("month").value);
  const region = document.getElementById("region").value.trim();
  return { params: { from: bounds.from, to: bounds.to, by: document.getElementById("by").value },
           purpose: document.getElementById("purpose").value.trim(), region: region || null };
}

function status(text, bad = false) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "status bad" : "status";
}

function updateButtons() {
  const ready = !!document.getElementById("purpose").value.trim() && !!monthBounds(document.getElementById("month").value);
  document.getElementById("run").disabled = !ready;
  const mayExport = sc.me && sc.me.may.includes("export");
  const b = document.getElementById("export-csv");
  b.disabled = !ready || !mayExport;
  b.title = mayExport ? "导出本月考核 (记入审计 audited as an export)" : "role analyst required for export";
}

function agencyLabel(row) {
  const branches = IB.codes().branches || {};
  const perRegion = document.getElementById("by").value === "region";
  const branch = row.branch ? (branches[row.branch] || row.branch) : (perRegion ? "" : "(地区 region)");
  return `${IB.regionName(row.region)} ${row.region} ${branch}`.trim();
}

const pct = (v) => (v === null || v === undefined ? "-" : `${(100 * v).toFixed(1)}%`);
const minutes = (v) => (v === null || v === undefined ? "-" : `${(v / 60).toFixed(1)}`);

function rowsOf(out) {
  return out.rows.map((r) => Object.fromEntries(out.columns.map((c, i) => [c, r[i]])));
}

function renderTable(rows) {
  const { el } = IB;
  if (!rows.length) return el("div", { class: "empty", text: "本月无事项 no items this month (in what you may see)" });
  const head = ["单位 agency", "收到协查 received", "1h受理 accepted", "4h反馈 answered", "已响应 responded",
    "响应中位 median (min)", "响应P90 p90 (min)", "升级 escalations", "拒绝 refusals", "命中待确认 hits owed",
    "按时确认 hits on time", "逾期未撤 stale listings"];
  const num = (text, low = false) => el("td", { class: low ? "num low" : "num", text: String(text) });
  const body = rows.map((r) => el("tr", { "data-agency": r.agency },
    el("td", { text: agencyLabel(r), title: r.agency }),
    num(r.requests_received),
    num(pct(r.accepted_on_time_share), r.accepted_on_time_share !== null && r.accepted_on_time_share < 0.5),
    num(pct(r.answered_on_time_share), r.answered_on_time_share !== null && r.answered_on_time_share < 0.5),
    num(r.responded), num(minutes(r.response_median_s)), num(minutes(r.response_p90_s)),
    num(r.escalations, r.escalations > 0),
    el("td", { text: r.refusals ? `${r.refusals} (${REASONS.filter((x) => r[`refused_${x}`]).map((x) => `${x.toUpperCase()} ${r[`refused_${x}`]}`).join(", ")})` : "0" }),
    num(r.hits_owed), num(pct(r.hits_confirmed_on_time_share)), num(r.stale_listings, r.stale_listings > 0)));
  return el("table", { class: "grid scorecard", id: "scorecard-table" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))), el("tbody", {}, body));
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Horizontal bars per agency: accepted, answered (shares of requests received), hits confirmed on time (of hits owed).
function renderChart(rows) {
  const chart = document.getElementById("chart");
  chart.replaceChildren();
  const labelW = 230, barW = 520, bar = 9, gap = 3, group = 3 * (bar + gap) + 10, top = 22;
  const width = labelW + barW + 60, height = top + Math.max(rows.length, 1) * group + 8;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    const x = labelW + p * barW;
    chart.append(svg("line", { class: "axis", x1: x, y1: top - 6, x2: x, y2: height - 4 }));
    chart.append(svg("text", { x, y: 12, "text-anchor": "middle" }, `${p * 100}%`));
  }
  if (!rows.length) {
    chart.append(svg("text", { x: labelW, y: top + 14 }, "无数据 no data"));
    return;
  }
  rows.forEach((r, i) => {
    const y0 = top + i * group;
    chart.append(svg("text", { x: labelW - 8, y: y0 + group / 2, "text-anchor": "end" }, agencyLabel(r)));
    [["acc", r.accepted_on_time_share, `${r.accepted_on_time}/${r.requests_received}`],
     ["ans", r.answered_on_time_share, `${r.answered_on_time}/${r.requests_received}`],
     ["hit", r.hits_confirmed_on_time_share, `${r.hits_confirmed_on_time}/${r.hits_owed}`]].forEach(([cls, share, count], k) => {
      const y = y0 + k * (bar + gap);
      if (share === null || share === undefined) return; // nothing owed: no bar (not a zero)
      const w = Math.max(share * barW, 1);
      const rect = svg("rect", { class: `bar ${cls}`, x: labelW, y, width: w, height: bar, "data-agency": r.agency });
      rect.append(svg("title", {}, `${agencyLabel(r)} ${cls}: ${pct(share)} (${count})`));
      chart.append(rect, svg("text", { x: labelW + w + 4, y: y + bar - 1 }, `${pct(share)} (${count})`));
    });
  });
}

async function run() {
  const b = body();
  status("查询中 loading…");
  try {
    const out = await IB.api("POST", "/api/v1/queries/scorecard", { ...b, limit: 10000, offset: 0 });
    sc.out = out;
    const rows = rowsOf(out);
    document.getElementById("period").textContent =
      `${IB.cst(b.params.from)} – ${IB.cst(b.params.to)}: 本月发出、开启或下达的事项 items sent, opened or issued in the month; ` +
      `按事件所载期限判定 on time by the deadlines the events carry · 仅含可见范围 limited to what ${out.region || "you"} may see`;
    document.getElementById("table").replaceChildren(renderTable(rows));
    renderChart(rows);
    status(`${rows.length} 个单位 agencies · ${Math.round(out.elapsed_ms)} ms · 已审计 audited`);
  } catch (e) {
    status(`查询被拒绝或失败 refused or failed: ${e.detail || e.message}`, true);
  }
}

async function main() {
  try { sc.me = await IB.start(); } catch (e) { return; }
  const params = new URLSearchParams(location.search);
  document.getElementById("month").value = params.get("month") || currentMonthCst();
  if (params.get("by")) document.getElementById("by").value = params.get("by");
  for (const id of ["purpose", "month"]) document.getElementById(id).addEventListener("input", updateButtons);
  document.getElementById("scorecard-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!document.getElementById("run").disabled) run();
  });
  document.getElementById("export-csv").addEventListener("click",
    () => IB.exportQuery("scorecard", "csv", body(), document.getElementById("status")));
  updateButtons();
}

document.addEventListener("DOMContentLoaded", main);
