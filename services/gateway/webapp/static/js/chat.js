// The chat page: conversation sidebar, the thread with streamed Markdown replies, the composer.
import { html, useEffect, useLayoutEffect, useRef, useState, useCallback } from "./html.js";
import { api } from "./api.js";
import { copyCodeOnClick, renderMarkdown } from "./markdown.js";
import {
  applyFrame, applySnapshot, awaitingReply, emptyThread, errorText, localMessage, streamingReply,
} from "./thread.js";

const DRAFT_KEY = "convoai.draft.";

function draftKey(conversationId) {
  return DRAFT_KEY + (conversationId || "new");
}

function when(iso) {
  const date = new Date(iso);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function Sidebar({ conversations, query, setQuery, activeId, open, close, error }) {
  return html`
    <aside class=${`sidebar ${open ? "open" : ""}`} aria-label="Conversations">
      <div class="sidebar-head">
        <a class="button primary new-chat" href="#/" onClick=${close}>+ New chat</a>
        <label class="sr-only" for="conv-search">Search conversations</label>
        <input id="conv-search" type="search" placeholder="Search conversations"
          value=${query} onInput=${(e) => setQuery(e.target.value)} />
      </div>
      ${error && html`<p class="error pad">${error}</p>`}
      ${conversations === null
        ? html`<p class="muted pad">Loading…</p>`
        : conversations.length === 0
          ? html`<p class="muted pad empty-hint">${query
              ? "No conversation matches your search."
              : "No conversations yet. Type a message to start one, or pick an assistant."}</p>`
          : html`<ul class="conv-list">
              ${conversations.map(
                (c) => html`<li key=${c.id}>
                  <a href=${`#/c/${c.id}`} onClick=${close}
                    class=${c.id === activeId ? "active" : ""}
                    aria-current=${c.id === activeId ? "page" : null}>
                    <span class="conv-title">${c.title}</span>
                    <span class="conv-meta">
                      ${c.status === "ended" && html`<span class="badge">Ended</span>`}
                      <time datetime=${c.updated_at}>${when(c.updated_at)}</time>
                    </span>
                  </a></li>`,
              )}
            </ul>`}
    </aside>`;
}

function Markdown({ text }) {
  return html`<div class="md" onClick=${copyCodeOnClick}
    dangerouslySetInnerHTML=${{ __html: renderMarkdown(text) }}></div>`;
}

function Message({ message, onRetry }) {
  if (message.role === "user") {
    const pending = message.status === "queued";
    return html`<div class="msg user" data-testid="message" data-role="user"
        data-status=${message.status}>
      <div class="bubble"><p class="plain">${message.content}</p></div>
      ${pending && html`<span class="msg-note">Not sent yet — waiting for the connection</span>`}
      ${message.status === "rejected" &&
        html`<span class="msg-note error">${errorText(message.error_code, message.error_message)}</span>`}
    </div>`;
  }
  const failed = message.status === "failed";
  return html`<div class="msg assistant" data-testid="message" data-role="assistant"
      data-status=${message.status} data-message-id=${message.id}>
    <div class="avatar" aria-hidden="true">AI</div>
    <div class="bubble">
      ${message.content && html`<${Markdown} text=${message.content} />`}
      ${message.status === "streaming" && !message.content &&
        html`<span class="typing" aria-label="The assistant is writing"><i></i><i></i><i></i></span>`}
      ${message.status === "cancelled" && html`<span class="tag">Stopped</span>`}
      ${failed && html`<div class="failed" role="alert">
          <strong>Reply failed.</strong> ${errorText(message.error_code, message.error_message)}
          ${!message.retried && html`<button type="button" class="small" onClick=${() => onRetry(message)}>
            Retry</button>`}
        </div>`}
      ${message.model && message.status !== "streaming" &&
        html`<span class="msg-meta">${message.model}</span>`}
    </div>
  </div>`;
}

function ThreadHeader({ conversation, assistant, model, onRename, onDelete, onEnd, openSidebar }) {
  const [renaming, setRenaming] = useState(false);
  const [title, setTitle] = useState("");
  const [confirming, setConfirming] = useState(false);
  if (!conversation) {
    return html`<div class="thread-head">
      <button type="button" class="ghost menu" onClick=${openSidebar} aria-label="Open conversations">☰</button>
      <h1>New chat</h1></div>`;
  }
  const save = async (event) => {
    event.preventDefault();
    if (title.trim()) await onRename(title.trim());
    setRenaming(false);
  };
  return html`<div class="thread-head">
    <button type="button" class="ghost menu" onClick=${openSidebar} aria-label="Open conversations">☰</button>
    ${renaming
      ? html`<form class="rename" onSubmit=${save}>
          <label class="sr-only" for="rename-input">Conversation title</label>
          <input id="rename-input" value=${title} maxlength="200"
            onInput=${(e) => setTitle(e.target.value)} />
          <button type="submit" class="small primary">Save</button>
          <button type="button" class="small ghost" onClick=${() => setRenaming(false)}>Cancel</button>
        </form>`
      : html`<div class="thread-title">
          <h1>${conversation.title}</h1>
          <span class="muted model-line" data-testid="model-in-use">
            ${assistant ? html`<span class="chip">${assistant.name}</span>` : null}
            ${model || "default model"}
            ${conversation.status === "ended" && html` · <span class="badge">Ended</span>`}
          </span>
        </div>`}
    ${!renaming && html`<div class="thread-actions">
      <button type="button" class="small ghost" onClick=${() => { setTitle(conversation.title); setRenaming(true); }}>Rename</button>
      ${conversation.status !== "ended" && html`<button type="button" class="small ghost" onClick=${onEnd}>End</button>`}
      <button type="button" class="small ghost danger" onClick=${() => setConfirming(true)}>Delete</button>
    </div>`}
    ${confirming && html`<div class="confirm" role="alertdialog" aria-label="Confirm delete">
      <span>Delete “${conversation.title}” and all its messages?</span>
      <button type="button" class="small danger solid" onClick=${onDelete}>Delete</button>
      <button type="button" class="small ghost" onClick=${() => setConfirming(false)}>Cancel</button>
    </div>`}
  </div>`;
}

export function ChatPage({ conversationId, connection, listeners, connState }) {
  const [conversations, setConversations] = useState(null);
  const [listError, setListError] = useState("");
  const [query, setQuery] = useState("");
  const [assistants, setAssistants] = useState([]);
  const [chosenAssistant, setChosenAssistant] = useState("");
  const [conversation, setConversation] = useState(null);
  const [thread, setThread] = useState(() => emptyThread(conversationId));
  const [draft, setDraft] = useState(() => sessionStorage.getItem(draftKey(conversationId)) || "");
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [notice, setNotice] = useState("");
  const current = useRef(conversationId);
  const resynced = useRef(new Set());
  const scroller = useRef(null);
  const pinned = useRef(true);

  const loadConversations = useCallback(async () => {
    try {
      const page = await api("/conversations/", { query: { q: query.trim(), limit: 100 } });
      const items = [...page.items].sort((a, b) => b.updated_at.localeCompare(a.updated_at));
      setConversations(items);
      setListError("");
    } catch (e) {
      setListError(e.message);
    }
  }, [query]);

  useEffect(() => {
    const timer = setTimeout(loadConversations, query ? 250 : 0);
    return () => clearTimeout(timer);
  }, [query]);

  useEffect(() => {
    api("/assistants/", { query: { limit: 100 } })
      .then((page) => setAssistants(page.items))
      .catch(() => setAssistants([]));
  }, []);

  useEffect(() => {
    current.current = conversationId;
    resynced.current = new Set();
    setThread(emptyThread(conversationId));
    setDraft(sessionStorage.getItem(draftKey(conversationId)) || "");
    setNotice("");
    setConversation(null);
    pinned.current = true;
    if (conversationId) {
      api(`/conversations/${conversationId}`)
        .then(setConversation)
        .catch((e) => setNotice(e.status === 404 ? "This conversation does not exist." : e.message));
    }
    connection.watch(conversationId);
  }, [conversationId]);

  useEffect(() => {
    const onFrame = (frame) => {
      const id = current.current;
      if (frame.type === "reply.completed" || frame.type === "conversation.ended") {
        loadConversations();
      }
      if (!id || (frame.conversation_id && frame.conversation_id !== id)) return;
      if (frame.type === "snapshot") {
        setThread((t) => applySnapshot(t, frame, connection.queued(id)));
        return;
      }
      if (frame.type === "conversation.ended") {
        setConversation((c) => (c ? { ...c, status: "ended" } : c));
        return;
      }
      if (frame.type === "error" && !frame.client_message_id && frame.code !== "nothing_to_cancel") {
        setNotice(errorText(frame.code, frame.message));
      }
      setThread((t) => {
        const { thread: next, resync } = applyFrame(t, frame);
        const key = frame.message_id || frame.client_message_id;
        if (resync && !resynced.current.has(key)) {
          resynced.current.add(key);
          queueMicrotask(() => connection.watch(id));
        }
        return next;
      });
    };
    listeners.add(onFrame);
    return () => listeners.delete(onFrame);
  }, [loadConversations]);

  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && pinned.current) el.scrollTop = el.scrollHeight;
  }, [thread]);

  // A failed reply whose question was asked again later (Retry) offers no second Retry.
  const retried = new Set(
    thread.messages
      .filter((m, i) => m.status === "failed" && thread.messages.slice(i + 1).some(
        (later) => later.role === "user" && later.content ===
          thread.messages.find((q) => q.id === m.reply_to)?.content))
      .map((m) => m.id),
  );
  const streaming = streamingReply(thread);
  const busy = Boolean(streaming) || awaitingReply(thread);
  const assistant = assistants.find((a) => a.id === conversation?.assistant_id);
  const lastModel = [...thread.messages].reverse().find((m) => m.model)?.model;
  const model = lastModel || conversation?.model || assistant?.model;
  const ended = conversation?.status === "ended";

  const stop = () => {
    if (conversationId && busy) connection.cancel(conversationId, streaming?.id);
  };

  useEffect(() => {
    const onKey = (event) => {
      if (event.key === "Escape" && busy) {
        event.preventDefault();
        stop();
      }
    };
    addEventListener("keydown", onKey);
    return () => removeEventListener("keydown", onKey);
  });

  const send = async (text) => {
    const content = text.trim();
    if (!content) return;
    let id = conversationId;
    if (!id) {
      try {
        const created = await api("/conversations/", {
          method: "POST",
          body: {
            title: content.slice(0, 60),
            assistant_id: chosenAssistant || undefined,
          },
        });
        id = created.id;
      } catch (e) {
        setNotice(e.message);
        return;
      }
    }
    const cid = connection.sendMessage(id, content);
    sessionStorage.removeItem(draftKey(conversationId));
    setDraft("");
    if (id !== conversationId) {
      location.hash = `#/c/${id}`;
      loadConversations();
    } else {
      pinned.current = true;
      setThread((t) => ({ ...t, messages: [...t.messages, localMessage(cid, content)] }));
    }
  };

  const retry = (reply) => {
    const question = thread.messages.find((m) => m.id === reply.reply_to);
    if (!question) return;
    setThread((t) => ({
      ...t,
      messages: t.messages.map((m) => (m.id === reply.id ? { ...m, retried: true } : m)),
    }));
    send(question.content);
  };

  const onKeyDown = (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!ended) send(draft);
    }
  };
  const onInput = (event) => {
    setDraft(event.target.value);
    sessionStorage.setItem(draftKey(conversationId), event.target.value);
  };

  const rename = async (title) => {
    const updated = await api(`/conversations/${conversationId}`, { method: "PATCH", body: { title } });
    setConversation(updated);
    loadConversations();
  };
  const remove = async () => {
    await api(`/conversations/${conversationId}`, { method: "DELETE" });
    location.hash = "#/";
    loadConversations();
  };
  const end = async () => {
    const updated = await api(`/conversations/${conversationId}/end`, { method: "POST" });
    setConversation(updated);
    loadConversations();
  };

  return html`
    <div class="chat">
      <${Sidebar} conversations=${conversations} query=${query} setQuery=${setQuery}
        activeId=${conversationId} open=${sidebarOpen} close=${() => setSidebarOpen(false)}
        error=${listError} />
      ${sidebarOpen && html`<div class="scrim" onClick=${() => setSidebarOpen(false)}></div>`}
      <main class="thread" id="main">
        <${ThreadHeader} conversation=${conversation} assistant=${assistant} model=${model}
          onRename=${rename} onDelete=${remove} onEnd=${end}
          openSidebar=${() => setSidebarOpen(true)} />
        ${notice && html`<p class="notice" role="status">${notice}</p>`}
        <div class="messages" ref=${scroller} data-testid="messages"
          onScroll=${(e) => {
            const el = e.currentTarget;
            pinned.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
          }}>
          ${!conversationId && html`<div class="welcome">
            <h2>What can I help you with?</h2>
            <p class="muted">Type a message below to start a conversation.
              ${assistants.length > 0 ? " You can also start from one of your assistants." : html` Create an <a href="#/assistants">assistant</a> to reuse a system prompt and model.`}</p>
            ${assistants.length > 0 && html`<label class="assistant-pick">Assistant
              <select value=${chosenAssistant} onChange=${(e) => setChosenAssistant(e.target.value)}>
                <option value="">None (default model)</option>
                ${assistants.map((a) => html`<option value=${a.id}>${a.name}</option>`)}
              </select></label>`}
          </div>`}
          ${conversationId && thread.loaded && thread.messages.length === 0 &&
            html`<p class="muted center">No messages yet. Say hello!</p>`}
          ${conversationId && !thread.loaded && html`<p class="muted center">Loading messages…</p>`}
          ${thread.messages.map(
            (m) => html`<${Message} key=${m.id || m.client_message_id}
              message=${retried.has(m.id) ? { ...m, retried: true } : m} onRetry=${retry} />`,
          )}
        </div>
        <form class="composer" onSubmit=${(e) => { e.preventDefault(); send(draft); }}>
          ${connState !== "online" && html`<p class="offline-note" role="status">
            ${connState === "reconnecting" ? "Connection lost — reconnecting. Messages you send now go out once it is back." : "Connecting…"}</p>`}
          ${ended && html`<p class="offline-note">This conversation has ended. Start a new chat to continue.</p>`}
          <label class="sr-only" for="composer-input">Message</label>
          <textarea id="composer-input" rows="1" placeholder="Message ConvoAI…"
            aria-describedby="composer-keys"
            value=${draft} onInput=${onInput} onKeyDown=${onKeyDown} disabled=${ended}></textarea>
          ${busy
            ? html`<button type="button" class="stop" onClick=${stop} title="Stop (Esc)">Stop</button>`
            : html`<button type="submit" class="primary send" disabled=${ended || !draft.trim()}>Send</button>`}
          <p class="keys" id="composer-keys">Enter sends · Shift+Enter adds a line · Esc stops a reply</p>
        </form>
      </main>
    </div>`;
}
