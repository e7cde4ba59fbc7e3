// The `responseFormat` generation option: validation, and the per-generation constraint it creates.
import { InvalidArgumentError, showValue } from "../errors.js";
import type { Tokenizer } from "../tokenizer.js";
import type { ResponseFormat } from "../types.js";
import { parseGrammar, type Grammar } from "./gbnf.js";
import type { SchemaNode } from "./json-recognizer.js";
import { ANY_VALUE, compileJsonSchema } from "./json-schema.js";
import { grammarRecognizer, jsonRecognizer, RecognizerConstraint, VocabTrie, type Constraint } from "./token-constraint.js";

/** A validated response format: null for free text. */
export type CompiledFormat = { root: SchemaNode } | { grammar: Grammar } | null;

const ANY_OBJECT: SchemaNode = { kind: "object", props: [], extra: ANY_VALUE };
const compiled = new WeakMap<object, CompiledFormat>();

/**
 * Validates `responseFormat` and compiles its schema (memoized per option object, so validating
 * the options and then generating compiles once). Throws InvalidArgumentError naming the field.
 */
export function compileResponseFormat(format: unknown, field = "responseFormat"): CompiledFormat {
  if (format === undefined) return null;
  if (typeof format !== "object" || format === null || Array.isArray(format))
    throw new InvalidArgumentError(field, 'expected { type: "text" | "json_object" | "json_schema" | "grammar", schema? | grammar? }');
  const have = compiled.get(format);
  if (have !== undefined) return have;
  const f = format as Record<string, unknown>;
  const known = f.type === "grammar" ? "grammar" : "schema";
  for (const k of Object.keys(f)) if (k !== "type" && k !== known) throw new InvalidArgumentError(`${field}.${k}`, k === "schema" || k === "grammar" ? `not with type ${showValue(f.type)}` : "unknown option");
  let out: CompiledFormat;
  switch (f.type) {
    case "text":
      if (f.schema !== undefined) throw new InvalidArgumentError(`${field}.schema`, 'a schema needs type "json_schema"');
      out = null;
      break;
    case "json_object":
      // Any JSON object (OpenAI's JSON mode); a schema, when given, narrows it (llama.cpp's server accepts that too).
      out = { root: f.schema === undefined ? ANY_OBJECT : compileJsonSchema(f.schema, `${field}.schema`) };
      break;
    case "json_schema":
      if (f.schema === undefined) throw new InvalidArgumentError(`${field}.schema`, 'is required with type "json_schema"');
      out = { root: compileJsonSchema(f.schema, `${field}.schema`) };
      break;
    case "grammar":
      if (f.grammar === undefined) throw new InvalidArgumentError(`${field}.grammar`, 'is required with type "grammar" (GBNF rules with a root rule)');
      out = { grammar: parseGrammar(f.grammar, `${field}.grammar`) };
      break;
    default:
      throw new InvalidArgumentError(`${field}.type`, `expected "text", "json_object", "json_schema" or "grammar", got ${showValue(f.type)}`);
  }
  compiled.set(format, out);
  return out;
}

const tries = new WeakMap<Tokenizer, VocabTrie>();

/** The constraint for one generation (null for free text). */
export function createConstraint(format: ResponseFormat | undefined, tokenizer: Tokenizer | null): Constraint | null {
  const c = compileResponseFormat(format);
  if (c === null) return null;
  if (!tokenizer) throw new InvalidArgumentError("responseFormat", "constrained output needs the model's tokenizer (this model has none: load it with tokenizerPath)");
  let trie = tries.get(tokenizer);
  if (!trie) {
    trie = new VocabTrie(tokenizer.tokenBytes());
    tries.set(tokenizer, trie);
  }
  if ("grammar" in c) return new RecognizerConstraint(grammarRecognizer(c.grammar, trie), trie, tokenizer.eosId);
  return new RecognizerConstraint(jsonRecognizer(c.root, trie), trie, tokenizer.eosId);
}
