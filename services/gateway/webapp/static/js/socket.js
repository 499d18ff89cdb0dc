// The chat WebSocket: authenticates with the in-memory access token, reconnects with backoff,
// re-subscribes (the gateway answers with a snapshot that includes a reply in progress), and
// keeps unacknowledged messages in an outbox that is resent with the same client_message_id,
// so the gateway stores each message once however often it is sent.
import { currentToken, refreshSession, SessionEnded, tokenExpiresInMs } from "./api.js";

const OUTBOX_KEY = "convoai.outbox";
const MAX_BACKOFF_MS = 10_000;

function loadOutbox() {
  try {
    return new Map(JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || "[]"));
  } catch {
    return new Map();
  }
}

export class ChatConnection {
  constructor({ onFrame, onState }) {
    this.onFrame = onFrame;
    this.onState = onState;
    this.ws = null;
    this.ready = false;
    this.stopped = true;
    this.failures = 0;
    this.timer = null;
    this.renewal = null;
    this.subscriptions = new Set();
    this.outbox = loadOutbox();
    this.state = "offline";
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.renewal);
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws) ws.close(1000, "signed out");
    this.outbox.clear();
    this.saveOutbox();
    this.setState("offline");
  }

  setState(state) {
    this.state = state;
    this.onState(state);
  }

  saveOutbox() {
    sessionStorage.setItem(OUTBOX_KEY, JSON.stringify([...this.outbox]));
  }

  async open() {
    this.setState(this.failures ? "reconnecting" : "connecting");
    let token;
    try {
      token = await currentToken();
    } catch (error) {
      if (error instanceof SessionEnded) return;
      this.retryLater();
      return;
    }
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (event) => {
      if (this.ws === ws) this.receive(JSON.parse(event.data));
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      clearTimeout(this.renewal);
      if (!this.stopped) this.retryLater();
    };
  }

  retryLater() {
    this.failures += 1;
    this.setState("reconnecting");
    const ceiling = Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(this.failures, 10));
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  /** Drop the connection now (as a network failure would); it reconnects on its own. */
  reconnect() {
    if (this.ws) this.ws.close(4000, "reconnect");
  }

  raw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  send(frame) {
    if (this.ready) this.raw(frame);
  }

  receive(frame) {
    if (frame.type === "ready") {
      this.ready = true;
      this.failures = 0;
      this.setState("online");
      for (const id of this.subscriptions) this.raw({ type: "subscribe", conversation_id: id });
      for (const [cid, message] of this.outbox) this.raw(sendFrame(cid, message));
      this.renewBeforeExpiry();
    } else if (frame.type === "ack") {
      this.outbox.delete(frame.client_message_id);
      this.saveOutbox();
    } else if (frame.type === "error" && frame.client_message_id) {
      const queued = this.outbox.get(frame.client_message_id);
      if (queued && (frame.code === "unavailable" || frame.code === "rate_limited")) {
        // Same client_message_id: the gateway stores it once even if an earlier try got in.
        const wait = Math.max(1, frame.retry_after || 1) * 1000;
        setTimeout(() => {
          if (this.outbox.has(frame.client_message_id)) {
            this.send(sendFrame(frame.client_message_id, queued));
          }
        }, wait);
      } else if (queued) {
        this.outbox.delete(frame.client_message_id);
        this.saveOutbox();
      }
    }
    this.onFrame(frame);
  }

  renewBeforeExpiry() {
    clearTimeout(this.renewal);
    const due = Math.max(5_000, tokenExpiresInMs() - 60_000);
    this.renewal = setTimeout(async () => {
      try {
        await refreshSession();
        this.send({ type: "auth", token: await currentToken() });
        this.renewBeforeExpiry();
      } catch {
        // The socket closes when its token expires and the reconnect asks for a session.
      }
    }, due);
  }

  watch(conversationId) {
    for (const id of this.subscriptions) {
      if (id !== conversationId) this.send({ type: "unsubscribe", conversation_id: id });
    }
    this.subscriptions = new Set(conversationId ? [conversationId] : []);
    if (conversationId) this.send({ type: "subscribe", conversation_id: conversationId });
  }

  /** Queue a message; it goes out now when connected, else after the next `ready`. */
  sendMessage(conversationId, content) {
    const cid = crypto.randomUUID();
    const message = { conversation_id: conversationId, content };
    this.outbox.set(cid, message);
    this.saveOutbox();
    this.send(sendFrame(cid, message));
    return cid;
  }

  queued(conversationId) {
    return [...this.outbox]
      .filter(([, m]) => m.conversation_id === conversationId)
      .map(([cid, m]) => ({ cid, content: m.content }));
  }

  cancel(conversationId, messageId) {
    this.send({ type: "cancel", conversation_id: conversationId, message_id: messageId });
  }
}

function sendFrame(cid, message) {
  return {
    type: "send_message",
    conversation_id: message.conversation_id,
    content: message.content,
    client_message_id: cid,
  };
}
