// Admin pages: the analytics dashboard and user management. The API refuses non-staff tokens
// on its own; these pages are also hidden from them (main.js).
import { html, useEffect, useRef, useState } from "./html.js";
import { api } from "./api.js";
import { TimeChart } from "./charts.js";

const ANALYTICS = "/api/v1/analytics";
const REFRESH_MS = 30_000;

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function daysAgo(n) {
  const d = new Date();
  d.setUTCDate(d.getUTCDate() - n);
  return isoDay(d);
}

function dayCount(start, end) {
  return Math.round((Date.parse(end) - Date.parse(start)) / 86_400_000) + 1;
}

const integer = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
const money = (n) => (n == null ? "–" : `$${n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 4 })}`);
const percent = (n) => (n == null ? "–" : `${(n * 100).toFixed(1)}%`);
const ms = (n) => (n == null ? "–" : `${Math.round(n).toLocaleString("en-US")} ms`);

function Stat({ id, label, value, format = integer, hint }) {
  return html`<div class="stat card" data-testid=${`stat-${id}`} data-value=${value ?? ""}>
    <span class="stat-label">${label}</span>
    <span class="stat-value">${format(value)}</span>
    ${hint && html`<span class="stat-hint">${hint}</span>`}
  </div>`;
}

function sum(rows, key) {
  return rows.reduce((total, row) => total + (row[key] || 0), 0);
}

export function DashboardPage() {
  const [range, setRange] = useState({ start: daysAgo(6), end: daysAgo(0) });
  const [data, setData] = useState(null);
  const [error, setError] = useState("");
  const [updated, setUpdated] = useState(null);
  const loading = useRef(false);

  const load = async () => {
    if (loading.current) return;
    loading.current = true;
    const days = dayCount(range.start, range.end);
    const since = dayCount(range.start, daysAgo(0));
    try {
      const [summary, daily, ttft, models, top, usage] = await Promise.all([
        api(`${ANALYTICS}/summary`),
        api(`${ANALYTICS}/daily-stats`, { query: { days, end: range.end } }),
        api(`${ANALYTICS}/ttft-daily`, { query: { days, end: range.end } }),
        api(`${ANALYTICS}/models`, { query: { start: range.start, end: range.end } }),
        api(`${ANALYTICS}/users/top`, { query: { by: "messages", limit: 10, days: Math.max(1, since) } }),
        api(`${ANALYTICS}/api-usage`, { query: { start: range.start, end: range.end, limit: 15 } }),
      ]);
      const rows = [...daily.items].sort((a, b) => a.date.localeCompare(b.date));
      const ttftRows = [...ttft.items].sort((a, b) => a.date.localeCompare(b.date));
      setData({
        summary, daily: rows, ttft: ttftRows, models: models.items, top: top.items, usage: usage.items,
      });
      setUpdated(new Date());
      setError("");
    } catch (e) {
      setError(e.status === 403 ? "Your account may not read analytics." : e.message);
    } finally {
      loading.current = false;
    }
  };

  useEffect(() => {
    load();
    const timer = setInterval(load, REFRESH_MS);
    return () => clearInterval(timer);
  }, [range.start, range.end]);

  const preset = (n) => setRange({ start: daysAgo(n - 1), end: daysAgo(0) });
  const valid = range.start <= range.end;
  const s = data?.summary;
  const daily = data?.daily || [];
  const days = daily.map((r) => r.date);

  return html`<main class="page wide" id="main">
    <div class="page-head">
      <h1>Dashboard</h1>
      <span class="row">
        <span class="muted small" role="status" data-testid="updated"
          data-updated=${updated ? updated.getTime() : ""}>
          ${updated ? `Updated ${updated.toLocaleTimeString()} · refreshes every 30 s` : "Loading…"}</span>
        <button type="button" class="small ghost" onClick=${load}>Refresh</button>
      </span>
    </div>
    <form class="range card" onSubmit=${(e) => e.preventDefault()} aria-label="Date range">
      <div class="presets" role="group" aria-label="Presets">
        ${[7, 30, 90].map((n) => html`<button type="button" class="small ghost"
          aria-pressed=${range.start === daysAgo(n - 1) && range.end === daysAgo(0)}
          onClick=${() => preset(n)}>Last ${n} days</button>`)}
      </div>
      <label>From <input type="date" value=${range.start} max=${range.end}
        onChange=${(e) => { const start = e.target.value; if (start) setRange((r) => ({ ...r, start })); }} /></label>
      <label>To <input type="date" value=${range.end} min=${range.start} max=${daysAgo(0)}
        onChange=${(e) => { const end = e.target.value; if (end) setRange((r) => ({ ...r, end })); }} /></label>
      ${!valid && html`<span class="error">The start must be before the end.</span>`}
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${s && html`
      <h2 class="section">All time</h2>
      <div class="stats">
        <${Stat} id="total_users" label="Users" value=${s.total_users} />
        <${Stat} id="active_users_today" label="Active today" value=${s.active_users_today} />
        <${Stat} id="total_conversations" label="Conversations" value=${s.total_conversations} />
        <${Stat} id="total_messages" label="Messages" value=${s.total_messages} />
        <${Stat} id="total_tokens" label="Tokens" value=${s.total_tokens} />
        <${Stat} id="total_cost_usd" label="Cost" value=${s.total_cost_usd} format=${money} />
        <${Stat} id="error_rate" label="HTTP error rate" value=${s.error_rate} format=${percent}
          hint=${`replies failed: ${percent(s.reply_failure_rate)}`} />
        <${Stat} id="ttft_p50_ms" label="TTFT p50" value=${s.ttft_p50_ms} format=${ms}
          hint=${`p95 ${ms(s.ttft_p95_ms)}`} />
        <${Stat} id="total_api_calls" label="API calls" value=${s.total_api_calls} />
      </div>
      <h2 class="section">${range.start} to ${range.end}</h2>
      <div class="stats">
        <${Stat} id="range_user_messages" label="User messages" value=${sum(daily, "user_messages")} />
        <${Stat} id="range_replies_completed" label="Replies" value=${sum(daily, "replies_completed")} />
        <${Stat} id="range_total_tokens" label="Tokens" value=${sum(daily, "total_tokens")} />
        <${Stat} id="range_cost_usd" label="Cost" value=${sum(daily, "cost_usd")} format=${money} />
        <${Stat} id="range_replies_failed" label="Failed replies" value=${sum(daily, "replies_failed")} />
      </div>
      <div class="charts">
        <${TimeChart} title="Messages per day" days=${days} series=${[
          { label: "User messages", values: daily.map((r) => r.user_messages) },
          { label: "Replies", values: daily.map((r) => r.replies_completed) },
        ]} />
        <${TimeChart} title="Tokens per day" days=${days} series=${[
          { label: "Prompt", values: daily.map((r) => r.prompt_tokens) },
          { label: "Completion", values: daily.map((r) => r.completion_tokens) },
        ]} />
        <${TimeChart} title="Time to first token per day" unit=" ms"
          days=${data.ttft.map((r) => r.date)} series=${[
          { label: "p50", values: data.ttft.map((r) => r.ttft_p50_ms) },
          { label: "p95", values: data.ttft.map((r) => r.ttft_p95_ms) },
        ]} />
        <${TimeChart} title="Average reply time per day" unit=" ms" days=${days} series=${[
          { label: "Reply duration", values: daily.map((r) => r.avg_response_time_ms) },
        ]} />
        <${TimeChart} title="Active users and API errors per day" days=${days} series=${[
          { label: "Active users", values: daily.map((r) => r.active_users) },
          { label: "API 5xx", values: daily.map((r) => r.api_server_errors) },
        ]} />
      </div>
      <div class="tables">
        <section class="card table-card">
          <h2>Cost and speed per model</h2>
          <div class="scroll-x"><table data-testid="models">
            <thead><tr><th scope="col">Model</th><th scope="col" class="num">Replies</th>
              <th scope="col" class="num">Tokens</th><th scope="col" class="num">Cost</th>
              <th scope="col" class="num">TTFT p50</th><th scope="col" class="num">TTFT p95</th></tr></thead>
            <tbody>${data.models.length === 0
              ? html`<tr><td colspan="6" class="muted">No replies in this range.</td></tr>`
              : data.models.map((m) => html`<tr>
                <td>${m.model}${!m.price_known && html` <span class="badge" title="No price configured">unpriced</span>`}</td>
                <td class="num">${integer(m.replies_completed)}</td>
                <td class="num">${integer(m.total_tokens)}</td><td class="num">${money(m.cost_usd)}</td>
                <td class="num">${ms(m.ttft_p50_ms)}</td><td class="num">${ms(m.ttft_p95_ms)}</td></tr>`)}
            </tbody></table></div>
        </section>
        <section class="card table-card">
          <h2>Top users</h2>
          <div class="scroll-x"><table data-testid="top-users">
            <thead><tr><th scope="col">User</th><th scope="col" class="num">Messages</th>
              <th scope="col" class="num">Tokens</th><th scope="col" class="num">Cost</th></tr></thead>
            <tbody>${data.top.length === 0
              ? html`<tr><td colspan="4" class="muted">No activity in this range.</td></tr>`
              : data.top.map((u) => html`<tr><td>${u.username || u.user_id}</td>
                <td class="num">${integer(u.user_messages)}</td><td class="num">${integer(u.total_tokens)}</td>
                <td class="num">${money(u.cost_usd)}</td></tr>`)}
            </tbody></table></div>
        </section>
        <section class="card table-card span-2">
          <h2>API usage</h2>
          <div class="scroll-x"><table data-testid="api-usage">
            <thead><tr><th scope="col">Service</th><th scope="col">Route</th>
              <th scope="col" class="num">Calls</th><th scope="col" class="num">Errors</th>
              <th scope="col" class="num">Avg latency</th></tr></thead>
            <tbody>${data.usage.length === 0
              ? html`<tr><td colspan="5" class="muted">No API calls in this range.</td></tr>`
              : data.usage.map((r) => html`<tr><td>${r.service}</td><td><code>${r.method} ${r.route}</code></td>
                <td class="num">${integer(r.calls)}</td>
                <td class="num">${integer(r.server_errors + r.client_errors)}</td>
                <td class="num">${ms(r.avg_latency_ms)}</td></tr>`)}
            </tbody></table></div>
        </section>
      </div>`}
  </main>`;
}

const ROLES = ["user", "manager", "admin"];

export function UsersPage({ user }) {
  const [query, setQuery] = useState("");
  const [skip, setSkip] = useState(0);
  const [page, setPage] = useState(null);
  const [message, setMessage] = useState(null);
  const admin = user.roles.includes("admin");
  const limit = 20;

  const load = () =>
    api("/users/", { query: { q: query.trim(), skip, limit } })
      .then(setPage)
      .catch((e) => setMessage({ error: true, text: e.message }));

  useEffect(() => {
    const timer = setTimeout(load, query ? 250 : 0);
    return () => clearTimeout(timer);
  }, [query, skip]);

  const change = async (target, body, done) => {
    try {
      await api(`/users/${target.id}`, { method: "PATCH", body });
      setMessage({ error: false, text: `${target.username}: ${done}.` });
    } catch (e) {
      setMessage({
        error: true,
        text: e.status === 409 ? `Not changed: ${e.message}.` : `Not changed: ${e.message}`,
      });
    }
    load();
  };

  return html`<main class="page wide" id="main">
    <div class="page-head"><h1>Users</h1>
      ${page && html`<span class="muted small">${page.total} accounts</span>`}</div>
    <label class="sr-only" for="user-search">Search users</label>
    <input id="user-search" type="search" placeholder="Search by name or email" value=${query}
      onInput=${(e) => { setQuery(e.target.value); setSkip(0); }} />
    ${message && html`<p class=${message.error ? "error" : "notice"} role=${message.error ? "alert" : "status"}
      data-testid="users-message">${message.text}</p>`}
    ${!admin && html`<p class="muted">Managers can read this list; only admins change accounts.</p>`}
    <div class="card table-card"><div class="scroll-x"><table data-testid="users">
      <thead><tr><th scope="col">User</th><th scope="col">Email</th><th scope="col">Role</th>
        <th scope="col">Status</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>
        ${page === null ? html`<tr><td colspan="5" class="muted">Loading…</td></tr>` : null}
        ${page && page.items.length === 0 ? html`<tr><td colspan="5" class="muted">No users match.</td></tr>` : null}
        ${page && page.items.map((u) => {
          const role = ROLES.slice().reverse().find((r) => u.roles.includes(r)) || "user";
          return html`<tr key=${u.id} data-username=${u.username}>
            <td><strong>${u.username}</strong>${u.full_name && html`<br /><span class="muted small">${u.full_name}</span>`}</td>
            <td>${u.email}</td>
            <td>${admin
              ? html`<label class="sr-only" for=${`role-${u.id}`}>Role of ${u.username}</label>
                <select id=${`role-${u.id}`} value=${role}
                  onChange=${(e) => change(u, { roles: [e.target.value] }, `role is now ${e.target.value}`)}>
                  ${ROLES.map((r) => html`<option value=${r}>${r}</option>`)}</select>`
              : role}</td>
            <td>${u.is_active ? html`<span class="badge ok">Active</span>` : html`<span class="badge">Deactivated</span>`}</td>
            <td class="num">${admin && html`<button type="button" class="small ghost"
              onClick=${() => change(u, { is_active: !u.is_active }, u.is_active ? "deactivated" : "reactivated")}>
              ${u.is_active ? "Deactivate" : "Reactivate"}</button>`}</td>
          </tr>`;
        })}
      </tbody></table></div></div>
    ${page && page.total > limit && html`<div class="row end">
      <button type="button" class="small ghost" disabled=${skip === 0} onClick=${() => setSkip(Math.max(0, skip - limit))}>Previous</button>
      <span class="muted small">${skip + 1}–${Math.min(skip + limit, page.total)} of ${page.total}</span>
      <button type="button" class="small ghost" disabled=${skip + limit >= page.total} onClick=${() => setSkip(skip + limit)}>Next</button>
    </div>`}
  </main>`;
}
