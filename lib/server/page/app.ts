// The chat page's script (a browser ES module, no dependencies). Kept in a String.raw template, so
// it must not contain backticks or dollar-brace sequences: test/server.test.ts checks that it parses.
export const APP_JS = String.raw`// llama2-native chat page: streams /v1/chat/completions over server-sent events.
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const DEFAULTS = { system: "You are a helpful assistant.", temperature: 0.7, topP: 0.95, maxTokens: 256 };

const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem("llama2." + key);
      return v === null ? fallback : JSON.parse(v);
    } catch (e) {
      return fallback;
    }
  },
  set(key, value) {
    try { localStorage.setItem("llama2." + key, JSON.stringify(value)); } catch (e) { /* private mode: keep in memory */ }
  },
};

// history: the conversation ({ role, content }, sent as is); wraps: each history message's element;
// dropped: how many of the oldest history messages no longer fit the model's context (not sent).
const state = { history: [], wraps: [], dropped: 0, controller: null, contextLength: null };
const el = {
  messages: $("messages"), empty: $("empty"), input: $("input"), send: $("send"), stop: $("stop"),
  newChat: $("new-chat"), settings: $("settings"), toggle: $("toggle-settings"), banner: $("banner"),
  system: $("system"), temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"),
  apiKey: $("api-key"), auth: $("auth"), modelName: $("model-name"), modelDevice: $("model-device"),
};

function loadSettings() {
  const s = Object.assign({}, DEFAULTS, store.get("settings", {}));
  el.system.value = s.system;
  el.temperature.value = String(s.temperature);
  el.topP.value = String(s.topP);
  el.maxTokens.value = String(s.maxTokens);
  el.apiKey.value = store.get("apiKey", "");
  showSliderValues();
}

function settings() {
  const maxTokens = Math.max(1, Math.floor(Number(el.maxTokens.value) || DEFAULTS.maxTokens));
  return {
    system: el.system.value,
    temperature: round2(el.temperature.value),
    topP: round2(el.topP.value),
    maxTokens: state.contextLength ? Math.min(maxTokens, state.contextLength - 1) : maxTokens,
  };
}

// Range inputs may report 0.7000000000000001; the API gets what the slider shows.
function round2(v) {
  return Math.round(Number(v) * 100) / 100;
}

function saveSettings() {
  store.set("settings", settings());
  showSliderValues();
}

function showSliderValues() {
  $("temperature-out").textContent = Number(el.temperature.value).toFixed(2);
  $("top-p-out").textContent = Number(el.topP.value).toFixed(2);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = el.apiKey.value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function banner(text) {
  el.banner.textContent = text || "";
  el.banner.hidden = !text;
}

function needKey(message) {
  el.auth.hidden = false;
  openSettings(true);
  el.apiKey.focus();
  banner(message);
}

async function loadModel() {
  try {
    const health = await (await fetch("/health")).json();
    el.auth.hidden = !health.auth_required;
    const res = await fetch("/v1/models", { headers: headers() });
    if (res.status === 401) {
      el.modelName.textContent = "API key needed";
      el.modelDevice.hidden = true;
      needKey("This server needs an API key: enter it in Settings.");
      return;
    }
    const body = await res.json();
    const m = body.data[0];
    el.modelName.textContent = m.id;
    if (m.llama2) {
      el.modelDevice.textContent = m.llama2.device_name + " · " + m.llama2.dtype;
      el.modelDevice.hidden = false;
      state.contextLength = m.llama2.context_length;
      el.maxTokens.max = String(m.llama2.context_length - 1);
    }
    banner("");
  } catch (e) {
    el.modelName.textContent = "server unreachable";
    banner("Cannot reach the server: " + e.message);
  }
}

function addMessage(role, text) {
  el.empty.hidden = true;
  const wrap = document.createElement("div");
  wrap.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role === "user" ? "You" : "Assistant";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text; // never innerHTML: model output is untrusted text
  const meta = document.createElement("div");
  meta.className = "meta";
  wrap.append(who, bubble, meta);
  el.messages.append(wrap);
  scrollDown();
  return { wrap, bubble, meta };
}

// Assistant replies are Markdown (rendered as DOM text nodes); the user's own messages stay plain text.
function showReply(bubble, text) {
  bubble.replaceChildren(renderMarkdown(text));
}

function scrollDown() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

function setBusy(busy) {
  el.send.hidden = busy;
  el.stop.hidden = !busy;
}

// Parses a server-sent event stream into JSON payloads; calls onData for each.
async function readEvents(body, onData) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data && data !== "[DONE]") onData(JSON.parse(data));
      }
    }
  }
}

async function sendMessage(text) {
  const s = settings();
  state.history.push({ role: "user", content: text });
  state.wraps.push(addMessage("user", text).wrap);
  const reply = addMessage("assistant", "");
  reply.wrap.classList.add("streaming");
  reply.bubble.classList.add("md");
  const system = s.system.trim() ? [{ role: "system", content: s.system }] : [];
  const droppedBefore = state.dropped;
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const t0 = performance.now();
  let firstAt = null;
  let out = "";
  let pieces = 0;
  let finish = null;
  let timings = null;
  let usage = null;
  let error = null;
  let stopped = false;
  try {
    let res;
    for (;;) {
      res = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers(),
        signal: controller.signal,
        body: JSON.stringify({
          messages: system.concat(state.history.slice(state.dropped)), stream: true, stream_options: { include_usage: true },
          temperature: s.temperature, top_p: s.topP, max_tokens: s.maxTokens,
        }),
      });
      // The conversation outgrew the context: the oldest exchange leaves it (the system prompt stays),
      // while one remains before the new question.
      if (res.status !== 400 || state.history.length - state.dropped < 3 || state.controller !== controller) break;
      const body = await res.clone().json().catch(() => null);
      if (!body || !body.error || body.error.code !== "context_length_exceeded") break;
      dropOldestExchange();
    }
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      if (res.status === 401) needKey("The API key was missing or wrong: enter it in Settings.");
      throw new Error(body && body.error ? body.error.message : "HTTP " + res.status);
    }
    await readEvents(res.body, (ev) => {
      if (ev.error) { error = ev.error.message; return; }
      if (ev.usage) usage = ev.usage;
      if (ev.timings) timings = ev.timings;
      const choice = ev.choices && ev.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        if (firstAt === null) firstAt = performance.now();
        out += choice.delta.content;
        pieces++;
        showReply(reply.bubble, out);
        scrollDown();
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else error = e.message;
  }
  if (state.controller !== controller) return; // "New chat" discarded this conversation
  state.controller = null;
  reply.wrap.classList.remove("streaming");
  if (out) {
    state.history.push({ role: "assistant", content: out });
    state.wraps.push(reply.wrap);
  } else takeBack(text); // failed, empty or stopped before any text
  const end = performance.now();
  const ttft = timings && timings.ttft_ms != null ? timings.ttft_ms : firstAt !== null ? firstAt - t0 : null;
  const tokens = usage ? usage.completion_tokens : pieces;
  const tps = timings && timings.tokens_per_second ? timings.tokens_per_second
    : firstAt !== null && end > firstAt && tokens > 1 ? (tokens - 1) / ((end - firstAt) / 1000) : null;
  const parts = [];
  if (tps !== null) parts.push(tps.toFixed(1) + " tok/s");
  if (ttft !== null) parts.push("TTFT " + Math.round(ttft) + " ms");
  if (tokens) parts.push(tokens + " tokens");
  if (state.dropped > droppedBefore) parts.push(state.dropped + " oldest messages left the context");
  if (stopped) parts.push("stopped");
  else if (finish === "length") parts.push("hit the token limit");
  reply.meta.textContent = parts.join(" · ");
  if (error) {
    reply.wrap.classList.add("error");
    const span = document.createElement("span");
    span.className = "err";
    span.textContent = (parts.length ? " · " : "") + error;
    reply.meta.append(span);
  }
  if (!out && !error) reply.bubble.textContent = stopped ? "(stopped)" : "(empty reply)";
  setBusy(false);
  el.input.focus();
}

function dropOldestExchange() {
  for (const w of state.wraps.slice(state.dropped, state.dropped + 2)) {
    w.classList.add("dropped");
    w.title = "No longer in the model's context";
  }
  state.dropped += 2;
}

// A user turn without a reply would make the next request send two user turns in a row, which the
// chat template refuses: drop it from the history, and give its text back for editing or resending.
function takeBack(text) {
  const last = state.history[state.history.length - 1];
  if (last && last.role === "user" && last.content === text) {
    state.history.pop();
    state.wraps.pop();
  }
  if (!el.input.value) {
    el.input.value = text;
    autoGrow();
  }
}

function newChat() {
  const c = state.controller;
  state.controller = null;
  if (c) c.abort();
  state.history = [];
  state.wraps = [];
  state.dropped = 0;
  for (const m of Array.from(el.messages.querySelectorAll(".msg"))) m.remove();
  el.empty.hidden = false;
  setBusy(false);
  banner("");
  el.input.value = "";
  autoGrow();
  el.input.focus();
}

function autoGrow() {
  el.input.style.height = "auto";
  el.input.style.height = Math.min(el.input.scrollHeight + 2, 192) + "px";
}

function openSettings(open) {
  el.settings.classList.toggle("open", open);
  el.toggle.setAttribute("aria-expanded", String(open));
}

el.input.addEventListener("input", autoGrow);
el.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = el.input.value.trim();
  if (!text || state.controller) return;
  el.input.value = "";
  autoGrow();
  sendMessage(text);
});
el.stop.addEventListener("click", () => { if (state.controller) state.controller.abort(); });
el.newChat.addEventListener("click", newChat);
el.toggle.addEventListener("click", () => openSettings(!el.settings.classList.contains("open")));
for (const input of [el.system, el.temperature, el.topP, el.maxTokens]) input.addEventListener("input", saveSettings);
el.apiKey.addEventListener("change", () => {
  store.set("apiKey", el.apiKey.value.trim());
  loadModel();
});
$("reset-settings").addEventListener("click", () => {
  store.set("settings", DEFAULTS);
  loadSettings();
});

loadSettings();
loadModel();
el.input.focus();
`;
