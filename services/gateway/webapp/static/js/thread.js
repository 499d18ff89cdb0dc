// One conversation's messages as the page shows them, built from the gateway's snapshot and
// live frames. A reply is keyed by its message id; `seq` and `attempt` decide what is new,
// so a frame seen twice (a reconnect, a second subscription) changes nothing.

export const ERROR_TEXT = {
  model_stream_interrupted: "The model stopped in the middle of the reply.",
  model_timeout: "The model did not answer in time.",
  model_unreachable: "The model service could not be reached.",
  model_rate_limited: "The model is busy (rate limited). Try again in a moment.",
  model_auth_failed: "The model service refused our credentials.",
  model_not_found: "The model does not exist.",
  model_unavailable: "The model service had an error.",
  model_bad_request: "The model refused the request.",
  model_error: "The model reported an error.",
  internal_error: "The reply could not be generated.",
  rate_limited: "You are sending messages too fast; wait a moment.",
  invalid_input: "The message was not accepted.",
  conflict: "This conversation has ended; start a new one.",
  not_found: "This conversation no longer exists.",
};

export function errorText(code, fallback) {
  return ERROR_TEXT[code] || fallback || "Something went wrong.";
}

export function emptyThread(conversationId) {
  return { conversationId, messages: [], loaded: false };
}

function byTime(a, b) {
  return String(a.created_at || "").localeCompare(String(b.created_at || ""));
}

export function applySnapshot(thread, frame, queued) {
  const stored = [...frame.messages].sort(byTime);
  const messages = stored.map((m) => ({ ...m }));
  for (const p of frame.partials || (frame.partial ? [frame.partial] : [])) {
    placeReply(messages, {
      id: p.message_id,
      role: "assistant",
      reply_to: p.reply_to,
      content: p.content,
      seq: p.seq,
      attempt: p.attempt,
      status: "streaming",
    });
  }
  const storedCids = new Set(stored.map((m) => m.client_message_id).filter(Boolean));
  const retried = new Set(thread.messages.filter((m) => m.retried).map((m) => m.id));
  for (const m of messages) if (retried.has(m.id)) m.retried = true;
  for (const q of queued) {
    if (!storedCids.has(q.cid)) messages.push(localMessage(q.cid, q.content));
  }
  return { ...thread, messages, loaded: true };
}

export function localMessage(cid, content) {
  return {
    id: null,
    role: "user",
    content,
    status: "queued",
    client_message_id: cid,
    created_at: new Date().toISOString(),
  };
}

function placeReply(messages, reply) {
  const at = messages.findIndex((m) => m.id === reply.id);
  if (at >= 0) {
    messages[at] = { ...messages[at], ...reply };
    return;
  }
  const parent = messages.findIndex((m) => m.id === reply.reply_to);
  if (parent < 0) {
    messages.push(reply);
    return;
  }
  let after = parent + 1;
  while (after < messages.length && messages[after].reply_to === reply.reply_to) after += 1;
  messages.splice(after, 0, reply);
}

/** The thread after one live frame, and whether the page should ask for a new snapshot. */
export function applyFrame(thread, frame) {
  const messages = [...thread.messages];
  const at = messages.findIndex((m) => frame.message_id && m.id === frame.message_id);
  const known = at >= 0 ? messages[at] : null;
  const stale =
    known && (frame.attempt || 1) < (known.attempt || 1);
  switch (frame.type) {
    case "ack": {
      const i = messages.findIndex((m) => m.client_message_id === frame.client_message_id);
      if (i >= 0) messages[i] = { ...messages[i], id: frame.message_id, status: "complete" };
      else messages.push({ ...localMessage(frame.client_message_id, ""), id: frame.message_id });
      return { thread: { ...thread, messages }, resync: i < 0 };
    }
    case "reply.started": {
      if (stale || (known && known.attempt === frame.attempt)) return { thread, resync: false };
      placeReply(messages, {
        id: frame.message_id,
        role: "assistant",
        reply_to: frame.reply_to,
        content: "",
        seq: frame.seq,
        attempt: frame.attempt,
        model: frame.model,
        status: "streaming",
      });
      const parentKnown = messages.some((m) => m.id === frame.reply_to);
      return { thread: { ...thread, messages }, resync: !parentKnown };
    }
    case "reply.delta": {
      if (stale) return { thread, resync: false };
      if (!known) {
        // Frames of a reply this page never saw start: only a snapshot can fill the gap.
        return { thread, resync: true };
      }
      if (known.status !== "streaming" || frame.seq <= (known.seq ?? -1)) {
        return { thread, resync: false };
      }
      messages[at] = { ...known, content: known.content + frame.delta, seq: frame.seq };
      return { thread: { ...thread, messages }, resync: false };
    }
    case "reply.completed":
    case "reply.failed":
    case "reply.cancelled": {
      if (stale) return { thread, resync: false };
      const status = {
        "reply.completed": "complete",
        "reply.failed": "failed",
        "reply.cancelled": "cancelled",
      }[frame.type];
      const reply = {
        id: frame.message_id,
        role: "assistant",
        reply_to: frame.reply_to,
        content: frame.content ?? known?.content ?? "",
        seq: frame.seq,
        attempt: frame.attempt,
        status,
        model: frame.model || known?.model,
        finish_reason: frame.finish_reason,
        error_code: frame.error?.code,
        error_message: frame.error?.message,
      };
      placeReply(messages, reply);
      const parentKnown = messages.some((m) => m.id === frame.reply_to);
      return { thread: { ...thread, messages }, resync: !parentKnown };
    }
    case "error": {
      if (!frame.client_message_id) return { thread, resync: false };
      const i = messages.findIndex((m) => m.client_message_id === frame.client_message_id);
      if (i < 0 || frame.code === "unavailable" || frame.code === "rate_limited") {
        return { thread, resync: false };
      }
      messages[i] = { ...messages[i], status: "rejected", error_code: frame.code,
        error_message: frame.message };
      return { thread: { ...thread, messages }, resync: false };
    }
    default:
      return { thread, resync: false };
  }
}

export function streamingReply(thread) {
  return thread.messages.find((m) => m.role === "assistant" && m.status === "streaming");
}

/** A user message that has no reply yet (the reply has not started streaming). */
export function awaitingReply(thread) {
  const answered = new Set(thread.messages.map((m) => m.reply_to).filter(Boolean));
  const last = thread.messages[thread.messages.length - 1];
  return Boolean(last && last.role === "user" && last.id && !answered.has(last.id)
    && last.status !== "rejected");
}
