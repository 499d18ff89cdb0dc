// Model output → sanitized HTML. Raw HTML in Markdown is shown as text, links other than
// http(s)/mailto become plain text, and DOMPurify is the last gate on whatever remains.
import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";

const SAFE_LINK = /^(https?:|mailto:)/i;

function escapeHtml(text) {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    link({ href, title, tokens }) {
      const label = this.parser.parseInline(tokens);
      if (!SAFE_LINK.test(String(href || "").trim())) return label;
      const t = title ? ` title="${escapeHtml(title)}"` : "";
      return `<a href="${escapeHtml(href)}"${t} target="_blank" rel="noopener noreferrer">${label}</a>`;
    },
    image({ href, text }) {
      // Remote images would leak the reader's address to whoever the model names.
      return escapeHtml(text || href || "");
    },
    code({ text, lang }) {
      const language = (lang || "").match(/^[\w+-]*/)[0];
      const cls = language ? ` class="language-${language}"` : "";
      return (
        `<div class="code"><div class="code-bar"><span>${escapeHtml(language || "code")}</span>` +
        `<button type="button" class="copy" data-copy>Copy</button></div>` +
        `<pre><code${cls}>${escapeHtml(text)}</code></pre></div>`
      );
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(text) {
  const raw = marked.parse(text || "", { async: false });
  return DOMPurify.sanitize(raw, {
    FORBID_TAGS: ["style", "form", "input", "textarea", "select", "img", "svg", "math"],
    FORBID_ATTR: ["style"],
    ADD_ATTR: ["target", "data-copy"],
  });
}

/** Click handler for a rendered message: the copy buttons of its code blocks. */
export async function copyCodeOnClick(event) {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const code = button.closest(".code")?.querySelector("code");
  if (!code) return;
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}
