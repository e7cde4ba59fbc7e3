// The chat page's Markdown renderer (a browser ES module, /markdown.js): the subset chat models write
// (fenced code, headings, lists, quotes, rules, paragraphs; inline code, bold, italic, http(s) links).
// It builds DOM nodes and sets only textContent, never innerHTML, so model output stays inert text.
// Like app.ts it lives in a String.raw template: no backticks or dollar-brace in it (written \x60).
export const MARKDOWN_JS = String.raw`// Markdown subset -> DOM (text nodes only).
const FENCE = /^ {0,3}(\x60{3,}|~{3,})\s*([\w+#.-]*)[^\x60]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
// Inline: code spans, [text](http(s) url), **bold**, *italic*.
const INLINE = /(\x60+)([^\x60][\s\S]*?)\1(?!\x60)|\[([^\]\n]+)\]\((https?:\/\/[^\s()]+)\)|\*\*(?=\S)([\s\S]+?)\*\*|\*(?=[^\s*])([^*\n]+?)\*/g;

function node(tag, cls) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  return e;
}

/** Appends text with its inline markup to parent. */
function inline(parent, text) {
  let last = 0;
  INLINE.lastIndex = 0;
  const matches = Array.from(text.matchAll(INLINE));
  for (const m of matches) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    if (m[1] !== undefined) {
      const c = node("code");
      c.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      parent.append(c);
    } else if (m[3] !== undefined) {
      const a = node("a");
      a.href = m[4];
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      inline(a, m[3]);
      parent.append(a);
    } else if (m[5] !== undefined) {
      const b = node("strong");
      inline(b, m[5]);
      parent.append(b);
    } else {
      const i = node("em");
      inline(i, m[6]);
      parent.append(i);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function codeBlock(code, lang) {
  const pre = node("pre", "code");
  const head = node("div", "code-head");
  const label = node("span");
  label.textContent = lang || "code";
  const copy = node("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(code);
      copy.textContent = "Copied";
    } catch (e) {
      // No clipboard (a plain-http page on another host): select the code for Ctrl-C instead.
      const range = document.createRange();
      range.selectNodeContents(body);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      copy.textContent = "Selected";
    }
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  head.append(label, copy);
  const body = node("code");
  body.textContent = code;
  pre.append(head, body);
  return pre;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || ITEM.test(line) || QUOTE.test(line);
}

/** Renders text (possibly still streaming: an open fence runs to the end) into a fragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length) {
        const t = lines[i].trim();
        if (t.length >= fence.length && t === fence[0].repeat(t.length)) break;
        body.push(lines[i]);
        i++;
      }
      i++; // the closing fence
      frag.append(codeBlock(body.join("\n"), m[2]));
    } else if (/^\s*$/.test(line)) {
      i++;
    } else if ((m = HEADING.exec(line))) {
      const h = node("h" + Math.min(6, m[1].length + 2));
      inline(h, m[2]);
      frag.append(h);
      i++;
    } else if (RULE.test(line)) {
      frag.append(node("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        quoted.push(m[1]);
        i++;
      }
      const q = node("blockquote");
      q.append(renderMarkdown(quoted.join("\n")));
      frag.append(q);
    } else if ((m = ITEM.exec(line))) {
      // One list per run of items of the same kind; deeper items are indented, not nested.
      const ordered = /\d/.test(m[2]);
      const list = node(ordered ? "ol" : "ul");
      if (ordered && parseInt(m[2], 10) !== 1) list.start = parseInt(m[2], 10);
      const base = m[1].length;
      let li = null;
      while (i < lines.length) {
        const it = ITEM.exec(lines[i]);
        if (it && /\d/.test(it[2]) === ordered) {
          li = node("li");
          const depth = Math.min(4, Math.floor(Math.max(0, it[1].length - base) / 2));
          if (depth) li.style.marginLeft = depth * 1.25 + "em";
          inline(li, it[3]);
          list.append(li);
          i++;
        } else if (li && !it && /^\s+\S/.test(lines[i])) {
          li.append(node("br"));
          inline(li, lines[i].trim()); // a continuation line of the item
          i++;
        } else break;
      }
      frag.append(list);
    } else {
      const p = node("p");
      let first = true;
      while (i < lines.length && !/^\s*$/.test(lines[i]) && (first || !startsBlock(lines[i]))) {
        if (!first) p.append(node("br"));
        inline(p, lines[i]);
        first = false;
        i++;
      }
      frag.append(p);
    }
  }
  return frag;
}
`;
