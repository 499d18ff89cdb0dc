// The app shell: session, navigation (hash routes), the one chat connection.
import { html, render, useEffect, useState, useMemo } from "./html.js";
import { claims, refreshSession, signOut, whenSessionEnds } from "./api.js";
import { ChatConnection } from "./socket.js";
import { SignIn, SignUp } from "./auth-views.js";
import { ChatPage } from "./chat.js";
import { AssistantsPage } from "./assistants.js";
import { DashboardPage, UsersPage } from "./admin.js";

function currentRoute() {
  const path = location.hash.replace(/^#/, "") || "/";
  return path.split("/").filter(Boolean);
}

function useRoute() {
  const [route, setRoute] = useState(currentRoute());
  useEffect(() => {
    const update = () => setRoute(currentRoute());
    addEventListener("hashchange", update);
    return () => removeEventListener("hashchange", update);
  }, []);
  return route;
}

function userFromToken() {
  const c = claims();
  return c ? { id: c.sub, username: c.username, roles: c.roles || [] } : null;
}

const STATE_LABEL = {
  online: "Connected",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

function App() {
  const route = useRoute();
  const [user, setUser] = useState(undefined);
  const [notice, setNotice] = useState("");
  const [connState, setConnState] = useState("offline");
  const [listeners] = useState(() => new Set());
  const connection = useMemo(
    () =>
      new ChatConnection({
        onFrame: (frame) => listeners.forEach((listener) => listener(frame)),
        onState: setConnState,
      }),
    [],
  );

  useEffect(() => {
    whenSessionEnds(() => {
      connection.stop();
      setNotice("Your session has ended. Sign in again — what you typed is kept.");
      setUser(null);
    });
    refreshSession()
      .then(() => setUser(userFromToken()))
      .catch(() => setUser(null));
  }, []);

  useEffect(() => {
    if (user) connection.start();
  }, [user]);

  if (user === undefined) return html`<div class="splash" role="status">Loading…</div>`;

  if (!user) {
    const signedIn = () => {
      setNotice("");
      setUser(userFromToken());
      if (route[0] === "signup" || route[0] === "signin") location.hash = "#/";
    };
    return route[0] === "signup"
      ? html`<${SignUp} onSignedIn=${signedIn} />`
      : html`<${SignIn} onSignedIn=${signedIn} notice=${notice} />`;
  }

  const staff = user.roles.includes("admin") || user.roles.includes("manager");
  const section = route[0] || "c";
  const logOut = async () => {
    connection.stop();
    await signOut();
    setUser(null);
    location.hash = "#/";
  };
  const link = (href, label, active) =>
    html`<a href=${href} class=${active ? "active" : ""} aria-current=${active ? "page" : null}>
      ${label}</a>`;

  let page;
  if (section === "assistants") {
    page = html`<${AssistantsPage} />`;
  } else if (section === "admin") {
    page = staff
      ? route[1] === "users"
        ? html`<${UsersPage} user=${user} />`
        : html`<${DashboardPage} />`
      : html`<main class="page narrow" id="main"><h1>Admins only</h1>
          <p class="muted">This page is for administrators. Your account cannot open it.</p>
          <p><a href="#/">Back to chat</a></p></main>`;
  } else {
    page = html`<${ChatPage}
      conversationId=${section === "c" ? route[1] : undefined}
      connection=${connection}
      listeners=${listeners}
      connState=${connState}
    />`;
  }

  return html`
    <div class="shell">
      <header class="topbar">
        <a class="brand" href="#/"><img src="/static/icon.svg" alt="" width="24" height="24" />
          <span>ConvoAI</span></a>
        <nav aria-label="Main">
          ${link("#/", "Chat", section === "c")}
          ${link("#/assistants", "Assistants", section === "assistants")}
          ${staff && link("#/admin", "Dashboard", section === "admin" && route[1] !== "users")}
          ${staff && link("#/admin/users", "Users", section === "admin" && route[1] === "users")}
        </nav>
        <span class=${`conn conn-${connState}`} role="status" data-testid="connection">
          ${STATE_LABEL[connState]}</span>
        <span class="who" title=${user.roles.join(", ")}>${user.username}</span>
        <button type="button" class="ghost" onClick=${logOut}>Sign out</button>
      </header>
      ${page}
    </div>
  `;
}

render(html`<${App} />`, document.getElementById("app"));
