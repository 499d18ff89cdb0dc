// HTTP to the gateway (same origin). The access token lives in memory only; the refresh token
// is an httpOnly cookie the page never sees (services/gateway/webapp/session.py).

let accessToken = null;
let expiresAt = 0;
let refreshing = null;
let onSessionEnded = () => {};

export class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(typeof detail === "string" ? detail : describeDetail(detail, status));
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export class SessionEnded extends Error {}

function describeDetail(detail, status) {
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const field = (d.loc || []).filter((p) => p !== "body").join(".");
        const msg = String(d.msg || "").replace(/^Value error, /, "");
        return field ? `${field}: ${msg}` : msg;
      })
      .join("; ");
  }
  return `Request failed (${status})`;
}

async function errorOf(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    detail = null;
  }
  return new ApiError(response.status, detail, Number(response.headers.get("retry-after")) || 0);
}

function keep(tokens) {
  accessToken = tokens.access_token;
  expiresAt = Date.now() + tokens.expires_in * 1000;
}

export function whenSessionEnds(callback) {
  onSessionEnded = callback;
}

export function claims() {
  if (!accessToken) return null;
  const part = accessToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

export async function signIn(username, password) {
  const response = await fetch("/webapp/session", {
    method: "POST",
    body: new URLSearchParams({ username, password }),
  });
  if (!response.ok) throw await errorOf(response);
  keep(await response.json());
}

export async function signUp(fields) {
  const response = await fetch("/auth/register", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(fields),
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export async function signOut() {
  accessToken = null;
  await fetch("/webapp/session", { method: "DELETE" }).catch(() => {});
}

/** A fresh access token from the refresh cookie. Auth rotates the token and treats a rotated
 * one sent again as theft, so refreshes never overlap — in this tab (one promise) nor across
 * tabs (a Web Lock: the next tab's request carries the cookie the previous one received). */
export function refreshSession() {
  if (!refreshing) {
    const post = () => fetch("/webapp/session/refresh", { method: "POST" });
    refreshing = (async () => {
      const response = navigator.locks
        ? await navigator.locks.request("convoai-refresh", post)
        : await post();
      if (response.status === 401 || response.status === 403) {
        const wasSignedIn = accessToken !== null;
        accessToken = null;
        if (wasSignedIn) onSessionEnded();
        throw new SessionEnded("Your session has ended; sign in again.");
      }
      if (!response.ok) throw await errorOf(response);
      keep(await response.json());
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

export async function currentToken() {
  if (!accessToken || Date.now() > expiresAt - 30_000) await refreshSession();
  return accessToken;
}

export function tokenExpiresInMs() {
  return expiresAt - Date.now();
}

export async function api(path, { method = "GET", body, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  for (let attempt = 0; ; attempt++) {
    const token = await currentToken();
    const headers = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && attempt === 0) {
      // Revoked or expired early: one refresh, then give up.
      accessToken = null;
      continue;
    }
    if (response.status === 401) {
      accessToken = null;
      onSessionEnded();
      throw new SessionEnded("Your session has ended; sign in again.");
    }
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    return response.json();
  }
}
