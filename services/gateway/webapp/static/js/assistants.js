// Assistants: a named system prompt with a model and temperature; a conversation can start from one.
import { html, useEffect, useState } from "./html.js";
import { api } from "./api.js";

const BLANK = { name: "", system_prompt: "", model: "", temperature: "" };

function AssistantForm({ initial, onSave, onCancel }) {
  const [form, setForm] = useState(initial);
  const [error, setError] = useState("");
  // An updater, not `{ ...form }`: two fields filled before the next render (autofill, a
  // password manager, a fast test) would otherwise each start from the same old form, and
  // the second would wipe the first.
  const set = (key) => (e) => {
    const value = e.target.value;
    setForm((current) => ({ ...current, [key]: value }));
  };
  const submit = async (event) => {
    event.preventDefault();
    const temperature = form.temperature === "" ? null : Number(form.temperature);
    try {
      await onSave({
        name: form.name.trim(),
        system_prompt: form.system_prompt,
        model: form.model.trim() || null,
        temperature,
      });
    } catch (e) {
      setError(e.message);
    }
  };
  return html`<form class="card stack" onSubmit=${submit}>
    <label>Name <input required maxlength="100" value=${form.name} onInput=${set("name")} /></label>
    <label>System prompt
      <textarea rows="4" value=${form.system_prompt} onInput=${set("system_prompt")}
        placeholder="You are a helpful assistant that…"></textarea></label>
    <div class="row">
      <label>Model <input value=${form.model} onInput=${set("model")} placeholder="default" /></label>
      <label>Temperature
        <input type="number" min="0" max="2" step="0.1" value=${form.temperature}
          onInput=${set("temperature")} placeholder="default" /></label>
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="row end">
      <button type="button" class="ghost" onClick=${onCancel}>Cancel</button>
      <button type="submit" class="primary">Save assistant</button>
    </div>
  </form>`;
}

export function AssistantsPage() {
  const [items, setItems] = useState(null);
  const [editing, setEditing] = useState(null);
  const [confirming, setConfirming] = useState(null);
  const [error, setError] = useState("");
  const load = () =>
    api("/assistants/", { query: { limit: 100 } })
      .then((page) => setItems(page.items))
      .catch((e) => setError(e.message));
  useEffect(() => {
    load();
  }, []);

  const save = async (body) => {
    if (editing === "new") await api("/assistants/", { method: "POST", body });
    else await api(`/assistants/${editing.id}`, { method: "PATCH", body });
    setEditing(null);
    load();
  };
  const remove = async (assistant) => {
    await api(`/assistants/${assistant.id}`, { method: "DELETE" });
    setConfirming(null);
    load();
  };
  const start = async (assistant) => {
    const conversation = await api("/conversations/", {
      method: "POST",
      body: { title: `Chat with ${assistant.name}`, assistant_id: assistant.id },
    });
    location.hash = `#/c/${conversation.id}`;
  };

  return html`<main class="page" id="main">
    <div class="page-head">
      <h1>Assistants</h1>
      ${editing === null && html`<button type="button" class="primary" onClick=${() => setEditing("new")}>
        New assistant</button>`}
    </div>
    <p class="muted">An assistant is a reusable system prompt with its model settings.</p>
    ${error && html`<p class="error">${error}</p>`}
    ${editing === "new" && html`<${AssistantForm} initial=${BLANK} onSave=${save}
      onCancel=${() => setEditing(null)} />`}
    ${items === null
      ? html`<p class="muted">Loading…</p>`
      : items.length === 0 && editing === null
        ? html`<div class="empty card"><p>No assistants yet.</p>
            <p class="muted">Create one to start conversations with a fixed role, model and temperature.</p></div>`
        : html`<div class="grid">
          ${items.map((a) =>
            editing && editing.id === a.id
              ? html`<${AssistantForm} key=${a.id} onSave=${save} onCancel=${() => setEditing(null)}
                  initial=${{ name: a.name, system_prompt: a.system_prompt, model: a.model || "",
                    temperature: a.temperature ?? "" }} />`
              : html`<article class="card assistant" key=${a.id}>
                  <h2>${a.name}</h2>
                  <p class="muted small">${a.model || "default model"} · temperature ${a.temperature ?? "default"}</p>
                  <p class="prompt">${a.system_prompt || html`<span class="muted">No system prompt</span>`}</p>
                  ${confirming === a.id
                    ? html`<div class="confirm"><span>Delete “${a.name}”?</span>
                        <button type="button" class="small danger solid" onClick=${() => remove(a)}>Delete</button>
                        <button type="button" class="small ghost" onClick=${() => setConfirming(null)}>Cancel</button></div>`
                    : html`<div class="row">
                        <button type="button" class="small primary" onClick=${() => start(a)}>Start chat</button>
                        <button type="button" class="small ghost" onClick=${() => setEditing(a)}>Edit</button>
                        <button type="button" class="small ghost danger" onClick=${() => setConfirming(a.id)}>Delete</button>
                      </div>`}
                </article>`,
          )}
        </div>`}
  </main>`;
}
