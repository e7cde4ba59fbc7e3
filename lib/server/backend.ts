// What the server and the job runner need from a loaded model. `Llama2` satisfies it; tests use a fake.
import type { EmbedOptions, EmbedResult, ScoreOptions, ScoreResult } from "../llama2.js";
import type { StreamDecoder, StreamDecoderOptions } from "../tokenizer/decoder.js";
import type { ChatMessage, GenerateOptions, GenerationStream, InfillOptions, ModelInfo } from "../types.js";

export interface ChatBackend {
  readonly info: ModelInfo;
  /** Applies the model's chat template. */
  chat(messages: ChatMessage[], opts?: GenerateOptions): GenerationStream;
  /** Raw completion of a text (BOS prepended) or of token ids (taken as they are). */
  generate(prompt: string | readonly number[], opts?: GenerateOptions): GenerationStream;
  tokenize(text: string, opts?: { bos?: boolean; special?: boolean }): number[];
  /**
   * Optional: exact prompt length of `messages` after the chat template. Used to bound max_tokens by
   * the context; without it the server estimates conservatively from tokenize().
   */
  chatPromptTokens?(messages: ChatMessage[]): number;
  /** Optional: teacher-forced log-probabilities (the completions endpoint's echo with logprobs needs it). */
  score?(ids: readonly number[], opts: ScoreOptions): Promise<ScoreResult>;
  /** Optional: fill in the middle (the completions endpoint's `suffix`); models without `info.fimTokens` refuse it. */
  infill?(prefix: string, suffix: string, opts?: InfillOptions): GenerationStream;
  /** Optional, with infill: the prompt infill evaluates (to bound max_tokens by the context). */
  infillPrompt?(prefix: string, suffix: string): number[];
  /** Optional: the pooled final hidden states of a text or of token ids (/v1/embeddings needs it). */
  embed?(input: string | readonly number[], opts: EmbedOptions): Promise<EmbedResult>;
  /** The tokenizer's decoder and token bytes (echo, /detokenize); null or absent without a tokenizer. */
  readonly tokenizer?: { createStreamDecoder(opts?: StreamDecoderOptions): StreamDecoder; tokenBytes(): readonly (Uint8Array | null)[] } | null;
  /** Requests waiting + running (for /metrics and fairness). */
  readonly pending: number;
  /** GPU memory in use, bytes (undefined on CPU). */
  deviceMemoryBytes(): number | undefined;
  dispose(): Promise<void>;
}

// Upper bound of the template's extra tokens per message ("[INST] <<SYS>> ... [/INST]", BOS/EOS).
const TEMPLATE_TOKENS_PER_MESSAGE = 12;

/** Prompt tokens of a chat, exact when the backend can say, otherwise an over-estimate. */
export function countChatTokens(backend: ChatBackend, messages: ChatMessage[]): number {
  if (backend.chatPromptTokens) return backend.chatPromptTokens(messages);
  let n = 1;
  for (const m of messages) n += backend.tokenize(m.content, { bos: false }).length + TEMPLATE_TOKENS_PER_MESSAGE;
  return n;
}
