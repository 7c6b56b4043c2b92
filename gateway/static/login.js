// The login page: name + password -> POST /api/v1/session (an HTTP-only session cookie and a CSRF cookie).
"use strict";

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/"; // never off this site
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const error = document.getElementById("login-error");
  const button = document.getElementById("login-button");
  error.textContent = "";
  button.disabled = true;
  try {
    const r = await fetch("/api/v1/session", {
      method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
      body: JSON.stringify({ name: document.getElementById("name").value.trim(),
                             password: document.getElementById("password").value }),
    });
    if (r.ok) { location.assign(nextPage()); return; }
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    error.textContent = r.status === 401 ? `用户名或密码错误 · Wrong name or password` :
      `登录失败 · Login failed (${r.status}): ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  } catch (e) {
    error.textContent = `无法连接网关 · Cannot reach the gateway: ${e.message}`;
  } finally {
    button.disabled = false;
  }
});
