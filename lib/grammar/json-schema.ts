// Compiles the JSON Schema subset that constrained generation enforces into the recognizer's nodes.
// Keywords that assert something the recognizer cannot enforce (pattern, minimum, ...) are refused
// with an error naming them, rather than ignored: the caller would otherwise get JSON that does not
// match the schema it sent. Annotations (title, description, format, ...) are accepted and ignored.
//
// Supported: type (a name or a list), enum, const, properties (generated in schema order; required
// ones cannot be skipped), required, additionalProperties (false; or true / a schema when there are
// no properties), items, minItems, maxItems, minLength, maxLength, anyOf, oneOf (as anyOf), allOf with
// one member, $ref to "#", "#/$defs/..." or "#/definitions/...", and OpenAPI's nullable.
import { InvalidArgumentError } from "../errors.js";
import { utf8, type SchemaNode } from "./json-recognizer.js";

const ANNOTATIONS = new Set([
  "$schema", "$id", "$comment", "$defs", "definitions", "title", "description", "default", "examples",
  "format", "deprecated", "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "strict",
]);
const SUPPORTED = new Set([
  "type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
  "minLength", "maxLength", "anyOf", "oneOf", "allOf", "$ref", "nullable",
]);
const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"] as const;
type TypeName = (typeof TYPES)[number];

/** Nesting of schemas (not of $refs, which may recurse) beyond which a schema is refused. */
const MAX_DEPTH = 64;
/** Nodes per schema: bounds the work a hostile schema can cause. */
const MAX_NODES = 10_000;

/** The node of "any JSON value". */
export const ANY_VALUE: SchemaNode = { kind: "any" };

/**
 * Compiles `schema` (a JSON Schema object, or true) into a recognizer node. `field` names the option
 * in error messages (e.g. "responseFormat.schema"); each error names the path inside the schema.
 */
export function compileJsonSchema(schema: unknown, field: string): SchemaNode {
  const root = schema;
  const refs = new Map<string, SchemaNode>();
  let nodes = 0;

  const fail = (path: string, msg: string): never => {
    throw new InvalidArgumentError(path, msg);
  };

  function compile(s: unknown, path: string, depth: number): SchemaNode {
    if (++nodes > MAX_NODES) fail(field, `the schema is too large (more than ${MAX_NODES} subschemas)`);
    if (depth > MAX_DEPTH) fail(path, `the schema is nested more than ${MAX_DEPTH} levels deep`);
    if (s === true) return ANY_VALUE;
    if (s === false) fail(path, "a false schema allows no value");
    if (typeof s !== "object" || s === null || Array.isArray(s)) return fail(path, `expected a schema object, got ${describe(s)}`);
    const o = s as Record<string, unknown>;
    for (const key of Object.keys(o)) {
      if (!SUPPORTED.has(key) && !ANNOTATIONS.has(key)) {
        fail(`${path}.${key}`, `the JSON Schema keyword "${key}" is not supported by constrained generation (supported: ${[...SUPPORTED].join(", ")})`);
      }
    }
    if (o.$ref !== undefined) {
      const others = Object.keys(o).filter((k) => k !== "$ref" && !ANNOTATIONS.has(k));
      if (others.length > 0) fail(`${path}.$ref`, `$ref next to other keywords (${others.join(", ")}) is not supported`);
      return ref(o.$ref, `${path}.$ref`, depth);
    }
    let node = compileBody(o, path, depth);
    if (o.nullable === true) node = union([node, LITERAL_NULL]);
    else if (o.nullable !== undefined && o.nullable !== false) fail(`${path}.nullable`, "expected true or false");
    return node;
  }

  function compileBody(o: Record<string, unknown>, path: string, depth: number): SchemaNode {
    if (o.const !== undefined || o.enum !== undefined) {
      let values: unknown[];
      if (o.const !== undefined) {
        if (o.enum !== undefined) fail(path, "const and enum together are not supported");
        values = [o.const];
      } else {
        if (!Array.isArray(o.enum) || o.enum.length === 0) return fail(`${path}.enum`, "expected a non-empty array");
        values = o.enum;
      }
      const types = o.type === undefined ? null : typeList(o.type, `${path}.type`);
      const texts = values
        .filter((v) => types === null || types.some((t) => isOfType(v, t)))
        .map((v, i) => {
          const text = JSON.stringify(v);
          if (text === undefined) fail(`${path}.enum[${i}]`, "is not a JSON value");
          return utf8(text);
        });
      if (texts.length === 0) fail(path, "no enum/const value has the schema's type");
      return { kind: "literal", texts };
    }
    if (o.anyOf !== undefined || o.oneOf !== undefined || o.allOf !== undefined) {
      const key = o.anyOf !== undefined ? "anyOf" : o.oneOf !== undefined ? "oneOf" : "allOf";
      const list = o[key];
      if (!Array.isArray(list) || list.length === 0) return fail(`${path}.${key}`, "expected a non-empty array of schemas");
      const rest = Object.keys(o).filter((k) => k !== key && !ANNOTATIONS.has(k) && k !== "nullable");
      if (rest.length > 0) fail(`${path}.${key}`, `${key} next to other keywords (${rest.join(", ")}) is not supported`);
      if (key === "allOf" && list.length !== 1) fail(`${path}.allOf`, "allOf with more than one schema is not supported");
      return union(list.map((s, i) => compile(s, `${path}.${key}[${i}]`, depth + 1)));
    }
    const types = o.type === undefined ? inferTypes(o) : typeList(o.type, `${path}.type`);
    if (types === null) return ANY_VALUE;
    return union(types.map((t) => ofType(t, o, path, depth)));
  }

  function ofType(t: TypeName, o: Record<string, unknown>, path: string, depth: number): SchemaNode {
    switch (t) {
      case "null":
        return LITERAL_NULL;
      case "boolean":
        return LITERAL_BOOL;
      case "integer":
      case "number":
        return { kind: "number", integer: t === "integer" };
      case "string": {
        const min = count(o, "minLength", path) ?? 0;
        const max = count(o, "maxLength", path) ?? Infinity;
        if (min > max) fail(`${path}.minLength`, `is larger than maxLength (${min} > ${max})`);
        return { kind: "string", min, max };
      }
      case "array": {
        const min = count(o, "minItems", path) ?? 0;
        const max = count(o, "maxItems", path) ?? Infinity;
        if (min > max) fail(`${path}.minItems`, `is larger than maxItems (${min} > ${max})`);
        const items = o.items === undefined ? ANY_VALUE : compile(o.items, `${path}.items`, depth + 1);
        return { kind: "array", items, min, max };
      }
      case "object": {
        const props: Extract<SchemaNode, { kind: "object" }>["props"] = [];
        const p = o.properties;
        if (p !== undefined && (typeof p !== "object" || p === null || Array.isArray(p))) fail(`${path}.properties`, "expected an object");
        const names = p ? Object.keys(p) : [];
        const required = new Set<string>();
        if (o.required !== undefined) {
          if (!Array.isArray(o.required)) fail(`${path}.required`, "expected an array of property names");
          (o.required as unknown[]).forEach((r, i) => {
            if (typeof r !== "string") fail(`${path}.required[${i}]`, "expected a property name");
            if (!names.includes(r as string)) fail(`${path}.required[${i}]`, `"${String(r)}" is not in properties`);
            required.add(r as string);
          });
        }
        for (const name of names) {
          const node = compile((p as Record<string, unknown>)[name], `${path}.properties.${name}`, depth + 1);
          props.push({ name, key: utf8(JSON.stringify(name).slice(1)), node, required: required.has(name) });
        }
        const ap = o.additionalProperties;
        let extra: SchemaNode | null = null;
        if (ap === undefined || ap === true) extra = names.length === 0 ? ANY_VALUE : null;
        else if (ap === false) extra = null;
        else if (names.length > 0) fail(`${path}.additionalProperties`, "a schema for additional properties next to properties is not supported (only false)");
        else extra = compile(ap, `${path}.additionalProperties`, depth + 1);
        return { kind: "object", props, extra };
      }
    }
  }

  function ref(r: unknown, path: string, depth: number): SchemaNode {
    if (typeof r !== "string") return fail(path, "expected a string");
    const have = refs.get(r);
    if (have) return have;
    let target: unknown;
    if (r === "#") target = root;
    else {
      const m = /^#\/(\$defs|definitions)\/([^/]+)$/.exec(r);
      if (!m) return fail(path, `only "#", "#/$defs/NAME" and "#/definitions/NAME" references are supported, got ${JSON.stringify(r)}`);
      const defs = (root as Record<string, unknown>)[m[1]!];
      const name = m[2]!.replaceAll("~1", "/").replaceAll("~0", "~");
      if (typeof defs !== "object" || defs === null || !Object.hasOwn(defs, name)) return fail(path, `${JSON.stringify(r)} does not name a definition of the schema`);
      target = (defs as Record<string, unknown>)[name];
    }
    // A placeholder first, filled in after compiling, so that recursive references point to it.
    const node = { kind: "anyOf", options: [] } as SchemaNode & { kind: "anyOf" };
    refs.set(r, node);
    node.options.push(compile(target, r === "#" ? field : `${field}.${r.slice(2).replaceAll("/", ".")}`, depth + 1));
    return node;
  }

  function count(o: Record<string, unknown>, key: string, path: string): number | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) fail(`${path}.${key}`, `expected an integer >= 0, got ${describe(v)}`);
    return v as number;
  }

  function typeList(t: unknown, path: string): TypeName[] {
    const list = Array.isArray(t) ? t : [t];
    if (list.length === 0) fail(path, "expected a type name or a non-empty list of them");
    return list.map((x, i) => {
      if (!TYPES.includes(x as TypeName)) fail(Array.isArray(t) ? `${path}[${i}]` : path, `expected one of ${TYPES.join(", ")}, got ${describe(x)}`);
      return x as TypeName;
    });
  }

  const node = compile(schema, field, 0);
  checkSatisfiable(node, field);
  return node;
}

const LITERAL_NULL: SchemaNode = { kind: "literal", texts: [utf8("null")] };
const LITERAL_BOOL: SchemaNode = { kind: "literal", texts: [utf8("true"), utf8("false")] };

/** Without "type", the keywords present say which types the schema is about (else: any value). */
function inferTypes(o: Record<string, unknown>): TypeName[] | null {
  if (o.properties !== undefined || o.required !== undefined || o.additionalProperties !== undefined) return ["object"];
  if (o.items !== undefined || o.minItems !== undefined || o.maxItems !== undefined) return ["array"];
  if (o.minLength !== undefined || o.maxLength !== undefined) return ["string"];
  return null;
}

function isOfType(v: unknown, t: TypeName): boolean {
  switch (t) {
    case "null":
      return v === null;
    case "boolean":
      return typeof v === "boolean";
    case "integer":
      return Number.isInteger(v);
    case "number":
      return typeof v === "number";
    case "string":
      return typeof v === "string";
    case "array":
      return Array.isArray(v);
    case "object":
      return typeof v === "object" && v !== null && !Array.isArray(v);
  }
}

function union(nodes: SchemaNode[]): SchemaNode {
  return nodes.length === 1 ? nodes[0]! : { kind: "anyOf", options: nodes };
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return JSON.stringify(v.length > 30 ? v.slice(0, 30) + "..." : v);
  return typeof v === "object" ? "an object" : `${typeof v} ${String(v)}`;
}

/**
 * Refuses schemas with no finite document, e.g. a required property that refers back to its own
 * object with nothing else allowed: generation could never finish, so no output could match.
 */
function checkSatisfiable(root: SchemaNode, field: string): void {
  const finite = new Set<SchemaNode>();
  // Fixed point: a node is finite when some finite document of it exists.
  for (let changed = true; changed; ) {
    changed = false;
    const visit = (n: SchemaNode, seen: Set<SchemaNode>): void => {
      if (seen.has(n)) return;
      seen.add(n);
      const kids = children(n);
      for (const c of kids) visit(c, seen);
      if (finite.has(n)) return;
      let ok: boolean;
      switch (n.kind) {
        case "object":
          ok = n.props.every((p) => !p.required || finite.has(p.node));
          break;
        case "array":
          ok = n.min === 0 || finite.has(n.items);
          break;
        case "anyOf":
          ok = n.options.some((o) => finite.has(o));
          break;
        default:
          ok = true;
      }
      if (ok) {
        finite.add(n);
        changed = true;
      }
    };
    visit(root, new Set());
  }
  if (!finite.has(root)) throw new InvalidArgumentError(field, "the schema allows no finite JSON document (a required property or item refers back to itself)");
}

function children(n: SchemaNode): SchemaNode[] {
  switch (n.kind) {
    case "object":
      return n.props.map((p) => p.node).concat(n.extra ? [n.extra] : []);
    case "array":
      return [n.items];
    case "anyOf":
      return n.options;
    default:
      return [];
  }
}
