// The chat page's HTML. Kept as a string so the compiled package carries it (tsc copies no assets).
export const INDEX_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llama2-native chat</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/style.css">
<script type="module" src="/app.js"></script>
</head>
<body>
<header class="top">
  <div class="brand"><img src="/favicon.svg" alt="" width="22" height="22"><strong>llama2-native</strong></div>
  <div class="model" title="Model and device">
    <span id="model-name">connecting…</span>
    <span id="model-device" class="badge" hidden></span>
  </div>
  <div class="actions">
    <button id="new-chat" type="button">New chat</button>
    <button id="toggle-settings" type="button" aria-expanded="false" aria-controls="settings">Settings</button>
  </div>
</header>
<div class="layout">
  <main class="chat">
    <div id="messages" class="messages" aria-live="polite">
      <div id="empty" class="empty">
        <p class="big">Ask the model anything.</p>
        <p>Replies stream in as they are generated. Settings holds the system prompt and sampling controls.</p>
      </div>
    </div>
    <p id="banner" class="banner" role="alert" hidden></p>
    <form id="composer" class="composer" autocomplete="off">
      <textarea id="input" rows="1" placeholder="Message (Enter to send, Shift+Enter for a new line)" aria-label="Message"></textarea>
      <button id="send" type="submit" class="primary">Send</button>
      <button id="stop" type="button" class="danger" hidden>Stop</button>
    </form>
  </main>
  <aside id="settings" class="settings" aria-label="Settings">
    <section id="auth" class="auth" hidden>
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="off" spellcheck="false" placeholder="Key this server was started with">
      <p class="hint">This server needs a key. It is kept in this browser only (localStorage).</p>
    </section>
    <label for="system">System prompt</label>
    <textarea id="system" rows="5"></textarea>
    <div class="field">
      <label for="temperature">Temperature <output id="temperature-out" for="temperature"></output></label>
      <input id="temperature" type="range" min="0" max="2" step="0.05">
    </div>
    <div class="field">
      <label for="top-p">Top-p <output id="top-p-out" for="top-p"></output></label>
      <input id="top-p" type="range" min="0.05" max="1" step="0.05">
    </div>
    <div class="field">
      <label for="max-tokens">Max tokens</label>
      <input id="max-tokens" type="number" min="1" step="1" inputmode="numeric">
    </div>
    <button id="reset-settings" type="button" class="link">Reset to defaults</button>
  </aside>
</div>
</body>
</html>
`;

export const FAVICON_SVG = String.raw`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#4f46e5"/><path d="M9 24V9h3v12h7v3zM20 24v-9h3v9z" fill="#fff"/><circle cx="21.5" cy="10.5" r="2" fill="#fff"/></svg>
`;
