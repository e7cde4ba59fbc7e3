// Speculative decoding's shared rules: whether a model can draft for another (the drafts are token ids,
// so both must use the same vocabulary) and how many drafts a step may verify. One place for the library
// options, the CLI flags, the server fields and the job runner.
import type { ModelInfo } from "../types.js";

/** The most draft tokens a step may verify (`lookup`, a draft model's `tokens`). */
export const MAX_DRAFT_TOKENS = 32;

/** Why `draft` cannot draft for `target` (its vocabulary differs), or undefined when it can. */
export function draftMismatch(target: ModelInfo, draft: ModelInfo): string | undefined {
  if (draft.config.vocabSize !== target.config.vocabSize) return `its vocabulary (${draft.config.vocabSize} tokens) is not the model's (${target.config.vocabSize} tokens)`;
  if (draft.bosId !== target.bosId || draft.eosId !== target.eosId)
    return `its BOS / EOS ids (${draft.bosId}, ${draft.eosId}) are not the model's (${target.bosId}, ${target.eosId})`;
  return undefined;
}
