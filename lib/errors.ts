// The typed errors every layer throws. Native errors arrive with the same `code` strings
// (native/common/error.h) and are rewrapped by `fromNative`.

export type ErrorCode =
  | "ERR_FILE_NOT_FOUND"
  | "ERR_FILE_READ"
  | "ERR_FILE_WRITE"
  | "ERR_DOWNLOAD"
  | "ERR_DOWNLOAD_AUTH"
  | "ERR_DOWNLOAD_CORRUPT"
  | "ERR_DISK_FULL"
  | "ERR_FORMAT_UNSUPPORTED"
  | "ERR_MODEL_CORRUPT"
  | "ERR_TENSOR_MISSING"
  | "ERR_TENSOR_SHAPE"
  | "ERR_TENSOR_DTYPE"
  | "ERR_MODEL_CONFIG"
  | "ERR_INVALID_ARGUMENT"
  | "ERR_CONTEXT_OVERFLOW"
  | "ERR_KV_CACHE_FULL"
  | "ERR_OUT_OF_MEMORY"
  | "ERR_DEVICE_UNAVAILABLE"
  | "ERR_CUDA_DRIVER"
  | "ERR_CUDA"
  | "ERR_DISPOSED"
  | "ERR_UNKNOWN_SEQUENCE"
  | "ERR_TOKENIZER"
  | "ERR_CHAT_TEMPLATE"
  | "ERR_SESSION_STATE"
  | "ERR_ADDON_LOAD"
  | "ERR_ABORTED"
  | "ERR_INTERNAL";

export class Llama2Error extends Error {
  readonly code: ErrorCode;
  /** A hint for the user (e.g. "try dtype: 'int8' or device: 'cpu'"), when there is one. */
  declare readonly suggestion?: string; // (declare: no own `suggestion: undefined` on errors without one)
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; suggestion?: string }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = "Llama2Error";
    this.code = code;
    if (options?.suggestion) this.suggestion = options.suggestion;
  }
}

/** Invalid API/CLI/HTTP argument. `field` names the offending option. */
export class InvalidArgumentError extends Llama2Error {
  readonly field: string;
  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super("ERR_INVALID_ARGUMENT", `${field}: ${message}`, options);
    this.name = "InvalidArgumentError";
    this.field = field;
  }
}

const SUGGESTIONS: Partial<Record<ErrorCode, string>> = {
  ERR_OUT_OF_MEMORY: "try dtype: 'int8', kvCacheType: 'int8', a smaller contextLength, or device: 'cpu'",
  ERR_DEVICE_UNAVAILABLE: "use device: 'cpu' (or 'auto'), or install the NVIDIA driver / rebuild with nvcc on PATH",
  ERR_CUDA_DRIVER: "update the NVIDIA driver (CUDA 13.0 needs driver >= 580) or use device: 'cpu'",
};

const INTERNAL_CALLS = new Set(["forward", "truncate", "spec", "cudaMemoryPlan(config, options)"]);

/** Converts an error thrown by the addon (a plain Error with `.code`) into a Llama2Error. */
export function fromNative(err: unknown): Llama2Error {
  if (err instanceof Llama2Error) return err;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === "string" && e.code.startsWith("ERR_") ? (e.code as ErrorCode) : "ERR_INTERNAL";
  const message = typeof e?.message === "string" ? e.message : String(err);
  // Native argument checks name the option first ("contextLength: ..."): keep it as `field` (not for the
  // engine's internal calls, whose messages start with the call's name).
  const arg = code === "ERR_INVALID_ARGUMENT" ? /^([A-Za-z_][\w.]*): ([^]*)$/.exec(message) : null;
  if (arg && !INTERNAL_CALLS.has(arg[1]!)) return new InvalidArgumentError(arg[1]!, arg[2]!, { cause: err });
  return new Llama2Error(code, message, { cause: err, suggestion: SUGGESTIONS[code] });
}

export function isLlama2Error(err: unknown): err is Llama2Error {
  return err instanceof Llama2Error;
}

/**
 * A value from user input, short, for an error message: strings quoted (cut at 40 characters), arrays and
 * objects only named (String() or JSON.stringify of a deeply nested one would overflow the stack).
 */
export function showValue(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? v.slice(0, 40) + "..." : v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : typeof v;
}
