// Sign in and sign up. The password rules are the auth service's (services/auth/passwords.py),
// shown and checked before submitting; the guessability estimate (zxcvbn) only the server makes.
import { html, useState } from "./html.js";
import { signIn, signUp } from "./api.js";

const RULES = [
  { text: "8 to 128 characters", ok: (p) => p.length >= 8 && p.length <= 128 },
  { text: "at least one letter and one digit", ok: (p) => /\p{L}/u.test(p) && /\d/.test(p) },
  {
    text: "not the same as your username or email",
    ok: (p, f) => p !== "" && ![f.username, f.email].some((x) => x && x.toLowerCase() === p.toLowerCase()),
  },
];
const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;

function AuthCard({ title, children, footer }) {
  return html`
    <main class="auth" id="main">
      <div class="auth-card">
        <div class="auth-brand"><img src="/static/icon.svg" alt="" width="40" height="40" />
          <span>ConvoAI</span></div>
        <h1>${title}</h1>
        ${children}
        <p class="auth-footer">${footer}</p>
      </div>
    </main>`;
}

export function SignIn({ onSignedIn, notice }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      await signIn(username.trim(), password);
      onSignedIn();
    } catch (e) {
      setError(e.status === 401 ? "Wrong username or password." : e.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<${AuthCard} title="Sign in"
      footer=${html`New here? <a href="#/signup">Create an account</a>`}>
    ${notice && html`<p class="notice" role="status">${notice}</p>`}
    <form onSubmit=${submit} class="stack">
      <label>Username or email
        <input name="username" autocomplete="username" required value=${username}
          onInput=${(e) => setUsername(e.target.value)} /></label>
      <label>Password
        <input name="password" type="password" autocomplete="current-password" required
          value=${password} onInput=${(e) => setPassword(e.target.value)} /></label>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
    </form>
  <//>`;
}

export function SignUp({ onSignedIn }) {
  const [form, setForm] = useState({ username: "", email: "", full_name: "", password: "" });
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  // An updater, not `{ ...form }`: two fields filled before the next render (autofill, a
  // password manager, a fast test) would otherwise each start from the same old form, and
  // the second would wipe the first.
  const set = (key) => (e) => {
    const value = e.target.value;
    setForm((current) => ({ ...current, [key]: value }));
  };
  const rules = RULES.map((r) => ({ ...r, met: r.ok(form.password, form) }));
  const valid = rules.every((r) => r.met) && USERNAME.test(form.username) && form.email.includes("@");
  const submit = async (event) => {
    event.preventDefault();
    if (!valid) {
      setError("Check the fields above: the password rules are not all met yet.");
      return;
    }
    setBusy(true);
    setError("");
    try {
      await signUp({
        username: form.username,
        email: form.email,
        password: form.password,
        full_name: form.full_name || undefined,
      });
      await signIn(form.username, form.password);
      onSignedIn();
    } catch (e) {
      setError(e.status === 409 ? "That username or email is already taken." : e.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<${AuthCard} title="Create your account"
      footer=${html`Already have an account? <a href="#/signin">Sign in</a>`}>
    <form onSubmit=${submit} class="stack">
      <label>Username
        <input name="username" autocomplete="username" required value=${form.username}
          aria-describedby="username-hint" onInput=${set("username")} />
        <span class="hint" id="username-hint">3–32 letters, digits, dots, dashes or underscores</span>
      </label>
      <label>Email
        <input name="email" type="email" autocomplete="email" required value=${form.email}
          onInput=${set("email")} /></label>
      <label>Full name <span class="muted">(optional)</span>
        <input name="full_name" autocomplete="name" value=${form.full_name}
          onInput=${set("full_name")} /></label>
      <label>Password
        <input name="password" type="password" autocomplete="new-password" required
          value=${form.password} aria-describedby="password-rules" onInput=${set("password")} />
      </label>
      <ul class="rules" id="password-rules" aria-label="Password rules">
        ${rules.map(
          (r) => html`<li class=${r.met ? "met" : ""}>
            <span aria-hidden="true">${r.met ? "✓" : "○"}</span> ${r.text}
            <span class="sr-only">${r.met ? "(met)" : "(not met)"}</span></li>`,
        )}
      </ul>
      <p class="hint">The server also refuses passwords that are easy to guess (common words,
        names, keyboard patterns); it says why when it does.</p>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>
        ${busy ? "Creating account…" : "Create account"}</button>
    </form>
  <//>`;
}
