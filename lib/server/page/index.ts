// The chat page's files: a fixed map of URL path -> content. The server serves nothing else, so no
// request can reach the file system.
import { APP_JS } from "./app.js";
import { FAVICON_SVG, INDEX_HTML } from "./html.js";
import { MARKDOWN_JS } from "./markdown.js";
import { STYLE_CSS } from "./style.js";

export interface PageFile {
  type: string;
  body: string;
}

const html: PageFile = { type: "text/html; charset=utf-8", body: INDEX_HTML };

export const PAGE_FILES: Readonly<Record<string, PageFile>> = Object.freeze({
  "/": html,
  "/index.html": html,
  "/app.js": { type: "text/javascript; charset=utf-8", body: APP_JS },
  "/markdown.js": { type: "text/javascript; charset=utf-8", body: MARKDOWN_JS },
  "/style.css": { type: "text/css; charset=utf-8", body: STYLE_CSS },
  "/favicon.svg": { type: "image/svg+xml", body: FAVICON_SVG },
});
