// The pages' own script (htmx does the rest): "use this suggestion" buttons, clearing a form
// after htmx sent it, and the group chat's live messages over Server-Sent Events. Every value
// from the server is set as text, never as HTML.
"use strict";

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-fill]");
  if (!button) return;
  const field = document.querySelector(button.dataset.fill);
  if (!field) return;
  field.value = button.dataset.text;
  field.focus();
});

document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt;
  if (event.detail.successful && form instanceof HTMLFormElement && form.dataset.reset === "true") {
    form.reset();
    const status = form.querySelector("[role=status]");
    if (status) status.textContent = "";
  }
});

// Enter sends, Shift+Enter makes a new line, in the group composer
document.addEventListener("keydown", (event) => {
  const field = event.target;
  if (event.key !== "Enter" || event.shiftKey || field.id !== "group-text") return;
  event.preventDefault();
  field.form.requestSubmit();
});

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined && text !== null) element.textContent = String(text);
  return element;
}

const CARD_PAGES = { listing: "/market/", reel: "/reels/", image: "/images/" };

function cardFor(data) {
  const page = CARD_PAGES[data.type];
  const card = node(page ? "a" : "div", `card ${data.type || ""}`);
  if (page && typeof data.id === "string") card.href = page + encodeURIComponent(data.id);
  card.appendChild(node("strong", "", data.title || data.caption || data.text || data.topic || data.prompt || data.type));
  return card;
}

function feedbackForm(generationId) {
  const form = node("form", "feedback");
  form.setAttribute("hx-post", `/feedback/${generationId}`);
  form.setAttribute("hx-swap", "outerHTML");
  form.appendChild(node("span", "hint", "Helpful?"));
  for (const [value, face, label] of [["up", "👍", "Yes, helpful"], ["down", "👎", "No, not helpful"]]) {
    const button = node("button", "thumb", face);
    button.type = "submit";
    button.name = "rating";
    button.value = value;
    button.setAttribute("aria-label", label);
    form.appendChild(button);
  }
  if (window.htmx) window.htmx.process(form);
  return form;
}

function startGroupEvents() {
  const list = document.getElementById("group-messages");
  if (!list || !list.dataset.events) return;
  const assistants = new Set(JSON.parse(list.dataset.ai || "[]"));
  const source = new EventSource(list.dataset.events);
  source.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (document.getElementById(`msg-${message.id}`)) return;
    const ai = assistants.has(message.author);
    const item = node("li", ai ? "msg assistant" : "msg");
    item.id = `msg-${message.id}`;
    item.dataset.id = message.id;
    item.dataset.author = message.author;
    const meta = node("p", "meta", message.author_name || message.author);
    if (ai) {
      const badge = node("span", "ai", "suggested by AI");
      badge.title = `Written by the model ${list.dataset.model}`;
      meta.append(" ", badge);
    }
    item.append(meta, node("p", "text", message.text));
    if (Array.isArray(message.cards) && message.cards.length) {
      const cards = node("div", "cards");
      message.cards.forEach((data) => cards.appendChild(cardFor(data)));
      item.appendChild(cards);
    }
    list.appendChild(item);
    // the assistant's reply to this viewer: theirs to rate (the form the server renders)
    const asked = message.reply_to && document.getElementById(`msg-${message.reply_to}`);
    if (Number.isInteger(message.generation_id) && asked && asked.dataset.author === list.dataset.me) {
      item.appendChild(feedbackForm(message.generation_id));
    }
    item.scrollIntoView({ block: "nearest" });
  });
  source.addEventListener("end", () => source.close());
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", startGroupEvents);
} else {
  startGroupEvents();
}

// Slow actions: while a request runs, its progress line counts the seconds; Stop aborts it
// (htmx drops the answer) and says so; Regenerate sends the form again (or reloads the
// element that loaded itself, e.g. the search summary).
const running = new Map();

document.addEventListener("htmx:beforeRequest", (event) => {
  const elt = event.detail.elt;
  const selector = elt.getAttribute && elt.getAttribute("hx-indicator");
  const indicator = selector ? document.querySelector(selector) : null;
  const counter = indicator ? indicator.querySelector("[data-elapsed]") : null;
  if (!counter) return;
  const started = Date.now();
  counter.textContent = "";
  clearInterval(running.get(elt));
  running.set(elt, setInterval(() => {
    counter.textContent = `${Math.round((Date.now() - started) / 1000)} s`;
  }, 1000));
});

document.addEventListener("htmx:afterRequest", (event) => {
  clearInterval(running.get(event.detail.elt));
  running.delete(event.detail.elt);
});

document.addEventListener("click", (event) => {
  const stop = event.target.closest("[data-stop]");
  if (stop) {
    const elt = document.querySelector(stop.dataset.stop);
    if (!elt) return;
    htmx.trigger(elt, "htmx:abort");
    const target = document.querySelector(elt.getAttribute("hx-target") || `#${elt.id}`);
    if (target) target.replaceChildren(node("p", "muted", "Stopped: nothing was changed."));
    return;
  }
  const again = event.target.closest("[data-regenerate]");
  if (again) {
    const elt = document.querySelector(again.dataset.regenerate);
    if (elt instanceof HTMLFormElement) elt.requestSubmit();
    else if (elt) htmx.trigger(elt, "regenerate");
  }
});
