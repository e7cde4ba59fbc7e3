// A small, strict argv parser for the `llama2` CLI: --flag value, --flag=value, --bool, --no-bool, positionals.
// Unknown flags and malformed values are InvalidArgumentError naming the flag.
import { InvalidArgumentError } from "../errors.js";

export type FlagType = "string" | "number" | "int" | "boolean" | "list";
export interface FlagSpec {
  type: FlagType;
  /** One-letter alias, e.g. "f" for -f. */
  alias?: string;
  description: string;
  default?: unknown;
  /** The flag may be given several times: its values collect into an array (a list's items concatenate). */
  repeatable?: boolean;
}
export type FlagSpecs = Record<string, FlagSpec>;
export interface Parsed {
  flags: Record<string, unknown>;
  positionals: string[];
}

export function parseArgs(argv: string[], specs: FlagSpecs): Parsed {
  const flags: Record<string, unknown> = {};
  const positionals: string[] = [];
  const byAlias = new Map<string, string>();
  for (const [name, s] of Object.entries(specs)) if (s.alias) byAlias.set(s.alias, name);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      inline = eq >= 0 ? arg.slice(eq + 1) : undefined;
    } else if (arg.length === 2 && arg[0] === "-" && arg[1] !== "-") {
      name = byAlias.get(arg[1]!);
      if (!name) throw new InvalidArgumentError(arg, "unknown option");
    } else {
      positionals.push(arg);
      continue;
    }
    let spec = specs[name];
    if (!spec && name.startsWith("no-") && specs[name.slice(3)]?.type === "boolean" && inline === undefined) {
      flags[toKey(name.slice(3))] = false;
      continue;
    }
    if (!spec) throw new InvalidArgumentError(`--${name}`, "unknown option (see --help)");
    if (spec.type === "boolean") {
      if (inline !== undefined && inline !== "true" && inline !== "false")
        throw new InvalidArgumentError(`--${name}`, `expected true or false, got '${inline}'`);
      flags[toKey(name)] = inline === undefined ? true : inline === "true";
      continue;
    }
    const raw = inline ?? argv[++i];
    if (raw === undefined) throw new InvalidArgumentError(`--${name}`, "needs a value");
    const value = convert(name, spec.type, raw);
    const prev = flags[toKey(name)];
    flags[toKey(name)] = !spec.repeatable ? value : [...((prev as unknown[] | undefined) ?? []), ...(Array.isArray(value) ? value : [value])];
  }
  for (const [name, s] of Object.entries(specs)) {
    const key = toKey(name);
    if (flags[key] === undefined && s.default !== undefined) flags[key] = s.default;
  }
  return { flags, positionals };
}

function toKey(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function convert(name: string, type: FlagType, raw: string): unknown {
  switch (type) {
    case "string":
      return raw;
    case "list":
      return raw.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    case "number": {
      const v = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(v)) throw new InvalidArgumentError(`--${name}`, `expected a number, got '${raw}'`);
      return v;
    }
    case "int": {
      const v = Number(raw);
      if (raw.trim() === "" || !Number.isSafeInteger(v)) throw new InvalidArgumentError(`--${name}`, `expected an integer, got '${raw}'`);
      return v;
    }
    default:
      return raw;
  }
}

export function formatHelp(usage: string, specs: FlagSpecs): string {
  const lines = [usage, "", "Options:"];
  for (const [name, s] of Object.entries(specs)) {
    const flag = `${s.alias ? `-${s.alias}, ` : ""}--${name}${s.type === "boolean" ? "" : ` <${s.type}>`}`;
    const def = s.default !== undefined ? ` (default: ${String(s.default)})` : "";
    lines.push(`  ${flag.padEnd(30)} ${s.description}${def}${s.repeatable ? " (repeatable)" : ""}`);
  }
  return lines.join("\n");
}

/** A list flag's values as integers in [1, max] (ERR_INVALID_ARGUMENT naming the flag otherwise). */
export function positiveInts(flag: string, v: unknown, max: number): number[] {
  const list = (v as string[]).map((s) => Number(s));
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n < 1 || n > max)) {
    throw new InvalidArgumentError(flag, `expected a comma list of integers in [1, ${max}], got '${(v as string[]).join(",")}'`);
  }
  return list;
}
