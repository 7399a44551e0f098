// The chat page: lists conversations, loads one, streams replies with fetch + ReadableStream.
// It talks to the same /api as host apps; the session cookie authenticates it and the CSRF
// header marks its writes as coming from this page.
"use strict";

const csrf = document.querySelector("meta[name=csrf-token]");
const headers = { "Content-Type": "application/json", "X-Townsquare-CSRF": csrf ? csrf.content : "" };
const list = document.getElementById("conversation-list");
const messages = document.getElementById("messages");
const form = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const statusLine = document.getElementById("status");
let current = null;

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function bubble(role, text) {
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  item.dataset.role = role;
  item.textContent = text;
  messages.appendChild(item);
  messages.scrollTop = messages.scrollHeight;
  return item;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// only http(s) and same-site links become links; anything else is shown as text
function safeHref(url) {
  if (typeof url !== "string") return null;
  if (url.startsWith("/") && !url.startsWith("//")) return url;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch (_) {
    return null;
  }
}

// the page of each kind of result: a card links there
const PAGES = { listing: "/market/", reel: "/reels/", image: "/images/" };

// one card per tool result; every value is set as text, never as HTML
function card(data) {
  const page = PAGES[data.type] && typeof data.id === "string" ? PAGES[data.type] + encodeURIComponent(data.id) : null;
  const href = page || safeHref(data.url || data.accept_url || (data.links && data.links[0]));
  const node = el(href ? "a" : "div", `card ${data.type}`);
  node.dataset.type = data.type;
  if (href) { node.href = href; if (!page) { node.target = "_blank"; node.rel = "noopener"; } }
  if (data.id) node.dataset.id = data.id;
  const add = (tag, text) => { if (text) node.appendChild(el(tag, "", text)); };
  switch (data.type) {
    case "listing":
      add("strong", data.title);
      add("span", `${data.price} ${data.currency} · ${data.location} · ${String(data.condition).replace("_", " ")}`);
      break;
    case "reel":
      node.dataset.reelId = data.id;
      add("strong", data.caption);
      add("span", `${data.creator} · ${Math.round(data.duration_s)} s`);
      break;
    case "point":
      add("strong", data.text);
      add("span", `cites ${data.message_ids.length} message${data.message_ids.length === 1 ? "" : "s"}`);
      break;
    case "topic":
      add("strong", data.topic);
      add("span", data.opener);
      break;
    case "suggestion":
    case "reply":
      add("strong", data.text);
      add("span", "suggested by AI · pick, edit, send");
      break;
    case "draft":
      add("strong", data.title);
      add("span", data.description);
      break;
    case "summary":
      add("strong", data.sentences.map((s) => `${s.text} ${s.citations.map((n) => `[${n}]`).join("")}`).join(" "));
      break;
    case "source":
      add("strong", `[${data.n}] ${data.title}`);
      add("span", data.kind);
      break;
    case "image": {
      const picture = el("img", "");
      picture.src = safeHref(data.url) || "";
      picture.alt = `AI-made picture: ${data.prompt}`;
      picture.width = Math.min(data.width, 256);
      picture.loading = "lazy";
      node.appendChild(picture);
      add("span", "made by AI · carries an invisible provenance mark");
      break;
    }
    default:
      add("strong", data.title || data.text || data.type);
  }
  return node;
}

function showCards(item, cards) {
  if (!cards || !cards.length) return;
  const strip = el("div", "cards");
  for (const data of cards) strip.appendChild(card(data));
  item.appendChild(strip);
}

// the reply as stored: Markdown rendered on the server (raw HTML escaped there), its cards,
// and a note when the token limit cut it
// thumbs up/down on a reply: feedback on its generation (for training exports)
function thumbs(generationId) {
  const box = el("div", "feedback");
  box.appendChild(el("span", "hint", "Helpful?"));
  for (const [rating, label, face] of [["up", "Yes, helpful", "👍"], ["down", "No, not helpful", "👎"]]) {
    const button = el("button", "thumb", face);
    button.type = "button";
    button.setAttribute("aria-label", label);
    button.addEventListener("click", async () => {
      const response = await fetch(`/api/generations/${generationId}/feedback`, {
        method: "POST", headers, body: JSON.stringify({ rating }),
      });
      box.replaceChildren(el("span", response.ok ? "hint done" : "error",
        response.ok ? `Thanks: you rated this ${rating === "up" ? "helpful" : "not helpful"}.` : await errorText(response)));
    });
    box.appendChild(button);
  }
  return box;
}

function finishReply(item, reply, generationId) {
  item.classList.add("rendered");
  const body = el("div", "body");
  body.innerHTML = reply.content_html;  // rendered and sanitised on the server
  item.replaceChildren(body);
  if (reply.truncated) item.appendChild(el("p", "note", "Cut at the length limit (max_tokens)."));
  if (reply.model) {
    const badge = el("span", "ai", "suggested by AI");
    badge.title = `Written by the model ${reply.model}`;
    item.prepend(badge);
  }
  showCards(item, reply.cards);
  if (generationId) item.appendChild(thumbs(generationId));
}

async function loadList() {
  const response = await fetch("/api/conversations");
  if (!response.ok) { statusLine.textContent = await errorText(response); return; }
  const { data } = await response.json();
  list.replaceChildren(...data.map((c) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `#${c.id}`;
    link.textContent = c.title || "New chat";
    link.className = c.id === current ? "active" : "";
    link.addEventListener("click", (event) => { event.preventDefault(); open(c.id); });
    item.appendChild(link);
    return item;
  }));
}

async function open(id) {
  const response = await fetch(`/api/conversations/${id}`);
  if (!response.ok) { statusLine.textContent = await errorText(response); return; }
  const conversation = await response.json();
  current = conversation.id;
  messages.replaceChildren();
  for (const m of conversation.messages) {
    const item = bubble(m.role, m.content);
    if (m.role === "assistant") finishReply(item, m);
  }
  await loadList();
}

async function create() {
  const response = await fetch("/api/conversations", { method: "POST", headers, body: "{}" });
  if (!response.ok) throw new Error(await errorText(response));
  const conversation = await response.json();
  current = conversation.id;
  messages.replaceChildren();
  await loadList();
}

async function send(content) {
  if (current === null) await create();
  bubble("user", content);
  const reply = bubble("assistant", "");
  const response = await fetch(`/api/conversations/${current}/messages`, {
    method: "POST", headers, body: JSON.stringify({ content, stream: true }),
  });
  if (!response.ok) {
    reply.classList.add("error");
    reply.textContent = await errorText(response);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) {
          reply.classList.add("error");
          reply.textContent = chunk.error.message;
          continue;
        }
        const delta = chunk.choices.length ? chunk.choices[0].delta : {};
        if (delta.content) reply.textContent += delta.content;
        if (chunk.townsquare) {
          reply.dataset.messageId = chunk.townsquare.reply.id;
          finishReply(reply, chunk.townsquare.reply, chunk.townsquare.generation_id);
        }
      }
      messages.scrollTop = messages.scrollHeight;
    }
  }
  await loadList();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = prompt.value.trim();
  if (!content) return;
  prompt.value = "";
  sendButton.disabled = true;
  statusLine.textContent = "The assistant is writing…";
  try {
    await send(content);
    statusLine.textContent = "";
  } catch (error) {
    statusLine.textContent = `Could not send: ${error.message}`;
  } finally {
    sendButton.disabled = false;
    prompt.focus();
  }
});

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
});

document.getElementById("new-chat").addEventListener("click", () => create().catch((e) => {
  statusLine.textContent = e.message;
}));

loadList().then(() => {
  const first = list.querySelector("a");
  if (first) open(Number(first.getAttribute("href").slice(1)));
});
