// The chat page's stylesheet (light and dark, narrow screens).
export const STYLE_CSS = String.raw`:root {
  --bg: #f7f7f8; --panel: #ffffff; --text: #1f2328; --muted: #667085; --border: #e4e7ec;
  --accent: #4f46e5; --accent-text: #ffffff; --user: #eef2ff; --assistant: #ffffff; --danger: #dc2626;
  --radius: 12px; --shadow: 0 1px 2px rgba(16, 24, 40, .06);
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #0f1115; --panel: #171a21; --text: #e6e8eb; --muted: #9aa4b2; --border: #2a2f3a;
    --accent: #818cf8; --accent-text: #0f1115; --user: #232a45; --assistant: #171a21; --danger: #f87171; }
}
* { box-sizing: border-box; }
html, body { height: 100%; margin: 0; }
body { background: var(--bg); color: var(--text); font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  display: flex; flex-direction: column; }
button, input, textarea { font: inherit; color: inherit; }
button { border: 1px solid var(--border); background: var(--panel); border-radius: 8px; padding: .45rem .9rem; cursor: pointer; }
button:hover { border-color: var(--accent); }
button:disabled { opacity: .5; cursor: default; }
button.primary { background: var(--accent); color: var(--accent-text); border-color: var(--accent); font-weight: 600; }
button.danger { background: var(--danger); color: #fff; border-color: var(--danger); font-weight: 600; }
button.link { border: none; background: none; color: var(--accent); padding: 0; }
:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }

.top { display: flex; align-items: center; gap: 1rem; padding: .6rem 1rem; background: var(--panel);
  border-bottom: 1px solid var(--border); }
.brand { display: flex; align-items: center; gap: .5rem; white-space: nowrap; }
.model { flex: 1; min-width: 0; display: flex; align-items: center; gap: .5rem; color: var(--muted); overflow: hidden; }
#model-name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-weight: 600; color: var(--text); }
.badge { font-size: .78rem; padding: .1rem .5rem; border-radius: 999px; border: 1px solid var(--border); white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.actions { display: flex; gap: .5rem; }

.layout { flex: 1; min-height: 0; display: grid; grid-template-columns: 1fr 300px; }
.chat { display: flex; flex-direction: column; min-height: 0; min-width: 0; }
.messages { flex: 1; overflow-y: auto; padding: 1.25rem 1rem 1rem; display: flex; flex-direction: column; gap: 1rem; }
.empty { margin: auto; text-align: center; color: var(--muted); max-width: 32rem; }
.empty .big { font-size: 1.3rem; color: var(--text); margin-bottom: .25rem; }

.msg { max-width: 48rem; width: 100%; margin: 0 auto; display: flex; flex-direction: column; gap: .25rem; }
.msg .role { font-size: .78rem; font-weight: 600; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.msg .bubble { white-space: pre-wrap; overflow-wrap: anywhere; padding: .7rem .9rem; border-radius: var(--radius);
  border: 1px solid var(--border); background: var(--assistant); box-shadow: var(--shadow); min-height: 2.6rem; }
.msg.user .bubble { background: var(--user); }
.msg.streaming .bubble::after { content: "▍"; animation: blink 1s steps(1) infinite; color: var(--accent); }
.msg .meta { font-size: .78rem; color: var(--muted); min-height: 1em; }
.msg.error .bubble { border-color: var(--danger); }
.msg.dropped { opacity: .5; }
/* Rendered Markdown (assistant replies). */
.msg .bubble.md { white-space: normal; }
.md > :first-child { margin-top: 0; }
.md > :last-child { margin-bottom: 0; }
.md p, .md ul, .md ol, .md blockquote, .md pre { margin: .5rem 0; }
.md ul, .md ol { padding-left: 1.5rem; }
.md h3, .md h4, .md h5, .md h6 { margin: .75rem 0 .35rem; font-size: 1rem; }
.md h3 { font-size: 1.1rem; }
.md blockquote { border-left: 3px solid var(--border); padding-left: .75rem; color: var(--muted); }
.md hr { border: none; border-top: 1px solid var(--border); }
.md a { color: var(--accent); }
.md code { font: .88em/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--bg);
  border: 1px solid var(--border); border-radius: 4px; padding: .05rem .3rem; }
.md pre.code { border: 1px solid var(--border); border-radius: 8px; background: var(--bg); overflow: hidden; }
.md pre.code > code { display: block; white-space: pre; overflow-x: auto; border: none; border-radius: 0; padding: .6rem .75rem; }
.md .code-head { display: flex; justify-content: space-between; align-items: center; padding: .2rem .5rem .2rem .75rem;
  border-bottom: 1px solid var(--border); font-size: .78rem; color: var(--muted); }
.md .code-head .copy { padding: .1rem .5rem; font-size: .78rem; }
.msg .meta .err { color: var(--danger); }
@keyframes blink { 50% { opacity: 0; } }

.banner { margin: 0 1rem .5rem; padding: .5rem .75rem; border-radius: 8px; border: 1px solid var(--danger); color: var(--danger); }
.composer { display: flex; gap: .5rem; padding: .75rem 1rem 1rem; max-width: 50rem; width: 100%; margin: 0 auto; align-items: flex-end; }
.composer textarea { flex: 1; resize: none; max-height: 12rem; padding: .65rem .8rem; border-radius: var(--radius);
  border: 1px solid var(--border); background: var(--panel); }

.settings { background: var(--panel); border-left: 1px solid var(--border); padding: 1rem; overflow-y: auto;
  display: flex; flex-direction: column; gap: .5rem; }
.settings label { font-weight: 600; font-size: .88rem; display: flex; justify-content: space-between; }
.settings textarea, .settings input[type=number], .settings input[type=password] { width: 100%; padding: .45rem .6rem;
  border: 1px solid var(--border); border-radius: 8px; background: var(--bg); }
.settings textarea { resize: vertical; }
.settings input[type=range] { width: 100%; accent-color: var(--accent); }
.field { margin-top: .5rem; }
.auth { padding-bottom: .75rem; margin-bottom: .25rem; border-bottom: 1px solid var(--border); }
.hint { font-size: .8rem; color: var(--muted); margin: .25rem 0 0; }
output { font-weight: 400; color: var(--muted); }

/* Narrow screens: settings become a panel over the chat, opened by the Settings button. */
@media (max-width: 860px) {
  .layout { grid-template-columns: 1fr; position: relative; }
  .settings { position: absolute; inset: 0 0 0 auto; width: min(100%, 340px); z-index: 2; box-shadow: -8px 0 24px rgba(0,0,0,.15);
    transform: translateX(100%); transition: transform .2s ease; visibility: hidden; }
  .settings.open { transform: none; visibility: visible; }
  .brand strong { display: none; }
  .top { gap: .5rem; padding: .5rem .75rem; }
}
@media (min-width: 861px) { #toggle-settings { display: none; } }
`;
