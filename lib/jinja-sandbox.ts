// Chat templates come with model files, and a Jinja template is a program: a broken or hostile one (a loop
// over range(10**9)) would stall the process at load or on a request. @huggingface/jinja therefore runs
// in a vm context of its own, and each parse or render is cut after a time limit (a normal dialog renders
// in well under 10 ms). Values cross between the realms as they are: the renderer reads them with typeof /
// Array.isArray, which work across realms.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import vm from "node:vm";
import { Llama2Error } from "./errors.js";

/** Longest a template may take to parse or render, ms. */
export const JINJA_TIME_LIMIT_MS = 1000;

/** A compiled template; render throws ERR_CHAT_TEMPLATE when it runs past the time limit. */
export interface SandboxedTemplate {
  render(args: Record<string, unknown>): string;
}

interface Sandbox extends vm.Context {
  jinja?: { Template: new (source: string) => unknown };
  template?: unknown;
  source?: string;
  args?: Record<string, unknown>;
  result?: unknown;
}

let sandbox: Sandbox | undefined;
const COMPILE = new vm.Script("result = new jinja.Template(source)");
const RENDER = new vm.Script("result = template.render(args)");

function context(): Sandbox {
  if (!sandbox) {
    let file: string;
    try {
      file = createRequire(import.meta.url).resolve("@huggingface/jinja"); // its CommonJS build (no dependencies)
    } catch (err) {
      throw new Llama2Error("ERR_CHAT_TEMPLATE", "Jinja chat templates need the '@huggingface/jinja' package", { cause: err });
    }
    const ctx: Sandbox = vm.createContext({});
    const load = vm.runInContext(`(function (module, exports) {\n${readFileSync(file, "utf8")}\n})`, ctx, { filename: file }) as (m: object, e: object) => void;
    const mod = { exports: {} as Sandbox["jinja"] };
    load(mod, mod.exports!);
    ctx.jinja = mod.exports;
    sandbox = ctx;
  }
  return sandbox;
}

/** Runs `script` in the sandbox with `globals` set, within the time limit; `what` names the step for errors. */
function run(script: vm.Script, globals: Partial<Sandbox>, what: string): unknown {
  const ctx = context();
  Object.assign(ctx, globals, { result: undefined });
  try {
    script.runInContext(ctx, { timeout: JINJA_TIME_LIMIT_MS });
    return ctx.result;
  } catch (err) {
    if ((err as { code?: unknown }).code === "ERR_SCRIPT_EXECUTION_TIMEOUT") {
      throw new Llama2Error("ERR_CHAT_TEMPLATE", `the chat template took over ${JINJA_TIME_LIMIT_MS / 1000} s to ${what} (stopped)`, { cause: err });
    }
    throw err; // the template's own error (a syntax error, raise_exception): the caller words it
  } finally {
    ctx.template = ctx.args = ctx.source = ctx.result = undefined; // no references kept between calls
  }
}

/** Parses `source` (throws the parser's error as it is, or ERR_CHAT_TEMPLATE past the time limit). */
export function compileJinja(source: string): SandboxedTemplate {
  const template = run(COMPILE, { source }, "parse");
  return {
    render: (args) => {
      const out = run(RENDER, { template, args }, "render");
      if (typeof out !== "string") throw new Llama2Error("ERR_CHAT_TEMPLATE", "the chat template rendered no text");
      return out;
    },
  };
}
