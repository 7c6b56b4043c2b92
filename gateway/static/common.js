// intelbus console: what every page shares (API calls with the CSRF token, who am I, labels, times).
// Plain JS, no library: the console must work with no internet.
"use strict";

const IB = (() => {
  const LABELS = {
    hit_type: { WANTED_PERSON: "在逃人员", WATCH_MATCH: "布控比中", CASE_LINK: "串并案线索", BORDER_DUPLICATE: "疑似重复报告" },
    classification: { PUBLIC: "公开", INTERNAL: "内部", SECRET: "秘密", HIGHLY_SECRET: "机密" },
    danger: { LOW: "低", MEDIUM: "中", HIGH: "高" },
    id_kind: { RESIDENT_ID: "身份证号", PLATE: "车牌", PHONE: "手机号", PASSPORT: "护照" },
    record_kind: { WANTED: "在逃人员记录", ALERT: "布控/协查", INCIDENT: "警情" },
    incident_type: { CHECKPOINT_CHECK: "卡口核查", HOTEL_CHECKIN: "旅馆住宿登记", RESIDENCE_REGISTRATION: "暂住登记",
      TRAFFIC_STOP: "交通拦检", THEFT: "盗窃", FRAUD: "诈骗", ROBBERY: "抢劫", DRUGS: "涉毒", ASSAULT: "伤害", OTHER: "其他" },
    alert_type: { ASSIST_REQUEST: "协查通报", WATCH: "布控", WARNING: "预警" },
    priority: { ROUTINE: "一般", URGENT: "紧急", CRITICAL: "特急" },
    role: { command_center: "指挥中心", analyst: "情报分析", integrator: "系统接入", auditor: "审计", operator: "运维" },
    gender: { M: "男", F: "女", U: "未知" },
    person_role: { SUSPECT: "嫌疑人", VICTIM: "受害人", WITNESS: "证人", WANTED: "在逃", CHECKED: "被核查人", OTHER: "其他" },
  };
  const CLS_ORDER = ["PUBLIC", "INTERNAL", "SECRET", "HIGHLY_SECRET"];
  let codes = { regions: {}, offences: {}, branches: {} };

  function label(kind, code) {
    const zh = (LABELS[kind] || {})[code];
    return zh ? `${zh} ${code}` : (code || "-");
  }
  function zh(kind, code) { return (LABELS[kind] || {})[code] || code || "-"; }

  function cookie(name) {
    const m = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return m ? decodeURIComponent(m.slice(name.length + 1)) : "";
  }

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
  }

  async function api(method, path, body, { raw = false } = {}) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-Token"] = cookie("intelbus_csrf");
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  credentials: "same-origin" });
    if (r.status === 401 && !path.startsWith("/api/v1/session")) { toLogin(); throw new ApiError(401, "not logged in"); }
    if (!r.ok) {
      let detail = r.statusText;
      try { const j = await r.json(); detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); } catch (e) { /* not JSON */ }
      throw new ApiError(r.status, detail);
    }
    return raw ? r : r.json();
  }

  function toLogin() {
    location.assign("/login?next=" + encodeURIComponent(location.pathname));
  }

  // A named query's whole result as a file, through the gateway's audited export route, saved under the
  // name the server gives (Content-Disposition: it carries the export id that leads back to the audit row).
  // `status`: the element that says what happened. Resolves to {file, exportId}, or null when refused.
  async function exportQuery(name, format, body, status) {
    const say = (text, bad = false) => {
      if (!status) return;
      status.textContent = text;
      status.classList.toggle("bad", bad);
    };
    say("导出中 exporting…");
    try {
      const r = await api("POST", `/api/v1/queries/${encodeURIComponent(name)}/export?format=${encodeURIComponent(format)}`,
                          body, { raw: true });
      const blob = await r.blob();
      const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
      const exportId = r.headers.get("X-Intelbus-Export-Id") || "";
      const a = el("a", { href: URL.createObjectURL(blob), download: m ? m[1] : `intelbus-${name}.${format}` });
      document.body.append(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 5000);
      say(`已导出 exported ${a.download} · 编号 ${exportId} · 已审计 audited`);
      return { file: a.download, exportId };
    } catch (e) {
      say(`导出被拒绝或失败 export refused or failed: ${e.detail || e.message}`, true);
      return null;
    }
  }

  // Times: stored and carried in UTC, shown in China Standard Time.
  const CST_FMT = new Intl.DateTimeFormat("zh-CN", { timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit",
    day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  function toDate(v) {
    if (v === null || v === undefined || v === "") return null;
    if (typeof v === "number") return new Date(v);
    let s = String(v).trim().replace(" ", "T");
    if (/^\d{4}-\d{2}-\d{2}$/.test(s)) return null; // a date alone: no time zone to convert
    s = s.replace(/(\.\d{3})\d+/, "$1");
    if (!/(Z|[+-]\d{2}:?\d{2})$/.test(s)) s += "Z"; // naive: UTC, as ClickHouse gives it
    const d = new Date(s);
    return isNaN(d) ? null : d;
  }
  function cst(v) {
    const d = toDate(v);
    if (!d) return v === null || v === undefined || v === "" ? "-" : String(v);
    const p = Object.fromEntries(CST_FMT.formatToParts(d).map((x) => [x.type, x.value]));
    return `${p.year}-${p.month}-${p.day} ${p.hour === "24" ? "00" : p.hour}:${p.minute}:${p.second} CST`;
  }
  function looksLikeTime(v) { return typeof v === "string" && /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/.test(v); }

  function region(code) {
    if (!code) return "-";
    const r = codes.regions[code];
    return r ? `${r.name} ${code}` : code;
  }
  function regionName(code) { const r = codes.regions[code]; return r ? r.name : code; }

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function maxClassification(list) {
    return list.reduce((a, b) => (CLS_ORDER.indexOf(b) > CLS_ORDER.indexOf(a) ? b : a), "PUBLIC");
  }
  function setBanner(cls) {
    for (const b of document.querySelectorAll(".page-banner")) {
      b.className = `banner page-banner cls-${cls}`;
      b.textContent = `${zh("classification", cls)} ${cls.replace("_", " ")} · 本页最高密级 · 注意保密`;
    }
  }

  // Who am I: the header panel every page shows; resolves to the whoami answer (or goes to /login).
  async function start() {
    const [me, c] = await Promise.all([api("GET", "/api/v1/whoami"), api("GET", "/api/v1/codes")]);
    codes = c;
    const branch = codes.branches[me.agency.branch] || me.agency.branch || "";
    const box = document.getElementById("whoami");
    if (box) {
      box.replaceChildren(el("details", { class: "whoami" },
        el("summary", { text: `${me.display_name || me.name} · ${me.agency.region_name}${branch} · ${me.roles.map((r) => zh("role", r)).join("/")}` }),
        el("div", { class: "details" }, el("dl", {},
          el("dt", { text: "用户 user" }), el("dd", { id: "me-name", text: `${me.name} (${me.display_name || ""})` }),
          el("dt", { text: "单位 agency" }), el("dd", { text: `${me.agency.region} ${me.agency.region_name} ${branch}` }),
          el("dt", { text: "角色 roles" }), el("dd", { text: me.roles.map((r) => `${zh("role", r)} ${r}`).join(", ") }),
          el("dt", { text: "密级 clearance" }), el("dd", { text: label("classification", me.clearance) }),
          el("dt", { text: "可做 may" }), el("dd", { text: me.may.join(", ") || "-" }),
          el("dt", { text: "可见 sees" }), el("dd", { text: [me.sees.regions, (me.sees.zones || []).length ? "zones " + me.sees.zones.join(", ") : "",
            (me.sees.classifications || []).length ? "classifications " + me.sees.classifications.join(", ") : ""].filter(Boolean).join("; ") }),
        ))));
    }
    const out = document.getElementById("logout");
    if (out) out.addEventListener("click", async () => {
      try { await api("DELETE", "/api/v1/session"); } finally { location.assign("/login"); }
    });
    setBanner(me.clearance === "PUBLIC" ? "PUBLIC" : "INTERNAL");
    const nav = document.querySelector("header.top nav");  // every page's nav leads to the scorecard
    if (nav && !nav.querySelector('a[href="/scorecard"]')) nav.append(el("a", { href: "/scorecard", text: "考核 Scorecard" }));
    return me;
  }

  return { LABELS, CLS_ORDER, label, zh, api, ApiError, cst, toDate, looksLikeTime, region, regionName, el, start,
           setBanner, maxClassification, codes: () => codes, toLogin, exportQuery };
})();

// A lat/lon plot in SVG (equirectangular, fitted to the points): places with region labels.
const Plot = (() => {
  const NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs = {}, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // points: [{lat, lon, cls, label, title}], links: [[i, j]], path: true to join points in order
  function draw(svg, points, { links = [], path = false, width = 400, height = 320 } = {}) {
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const pts = points.filter((p) => typeof p.lat === "number" && typeof p.lon === "number");
    if (!pts.length) {
      svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "暂无地点 no places yet"));
      return;
    }
    let [la0, la1, lo0, lo1] = [Math.min(...pts.map((p) => p.lat)), Math.max(...pts.map((p) => p.lat)),
                                Math.min(...pts.map((p) => p.lon)), Math.max(...pts.map((p) => p.lon))];
    const k = Math.cos(((la0 + la1) / 2) * Math.PI / 180);
    const span = Math.max(1.0, (la1 - la0) * 1.3, (lo1 - lo0) * k * 1.3 * height / width);
    const cla = (la0 + la1) / 2, clo = (lo0 + lo1) / 2;
    const scale = height / span;
    const x = (lon) => width / 2 + (lon - clo) * k * scale;
    const y = (lat) => height / 2 - (lat - cla) * scale;
    // graticule every degree (or 5 degrees when wide), labelled
    const step = span > 12 ? 5 : 1;
    for (let g = Math.ceil((clo - width / 2 / k / scale) / step) * step; x(g) < width; g += step) {
      svg.append(s("line", { x1: x(g), y1: 0, x2: x(g), y2: height, class: "grid" }));
      svg.append(s("text", { x: x(g) + 2, y: height - 3 }, `${g}°E`));
    }
    for (let g = Math.ceil((cla - height / 2 / scale) / step) * step; y(g) > 0; g += step) {
      svg.append(s("line", { x1: 0, y1: y(g), x2: width, y2: y(g), class: "grid" }));
      svg.append(s("text", { x: 2, y: y(g) - 2 }, `${g}°N`));
    }
    for (const [i, j] of links) {
      const a = points[i], b = points[j];
      if (a && b && typeof a.lat === "number" && typeof b.lat === "number")
        svg.append(s("line", { x1: x(a.lon), y1: y(a.lat), x2: x(b.lon), y2: y(b.lat), class: "link" }));
    }
    if (path && pts.length > 1)
      svg.append(s("polyline", { points: pts.map((p) => `${x(p.lon)},${y(p.lat)}`).join(" "), class: "trail" }));
    const labelled = new Set();
    pts.forEach((p, n) => {
      const c = s("circle", { cx: x(p.lon), cy: y(p.lat), r: 5, class: p.cls || "seen" });
      c.append(s("title", {}, p.title || p.label || ""));
      svg.append(c);
      const key = `${p.label}@${Math.round(x(p.lon))},${Math.round(y(p.lat))}`;
      if (p.label && !labelled.has(key)) {
        labelled.add(key);
        svg.append(s("text", { x: x(p.lon) + 7, y: y(p.lat) + 4 }, path ? `${n + 1}. ${p.label}` : p.label));
      }
    });
  }
  // A place for an event: its own lat/lon when it has them, else its region's approximate place.
  function place(code, location) {
    if (location && typeof location.lat === "number" && typeof location.lon === "number") return { lat: location.lat, lon: location.lon };
    const r = IB.codes().regions[code];
    return r ? { lat: r.lat, lon: r.lon } : {};
  }
  return { draw, place };
})();
