// Whether a model can draft for another (speculative decoding): the drafts are token ids, so both must
// use the same vocabulary. One check for the library option, the CLI flags and the job runner.
import type { ModelInfo } from "../types.js";

/** Why `draft` cannot draft for `target` (its vocabulary differs), or undefined when it can. */
export function draftMismatch(target: ModelInfo, draft: ModelInfo): string | undefined {
  if (draft.config.vocabSize !== target.config.vocabSize) return `its vocabulary (${draft.config.vocabSize} tokens) is not the model's (${target.config.vocabSize} tokens)`;
  if (draft.bosId !== target.bosId || draft.eosId !== target.eosId)
    return `its BOS / EOS ids (${draft.bosId}, ${draft.eosId}) are not the model's (${target.bosId}, ${target.eosId})`;
  return undefined;
}
