// llama2-native: the public entry point.
export { Llama2, type ChatOptions } from "./llama2.js";
export { ChatSession } from "./session.js";
export { Tokenizer } from "./tokenizer.js";
export { getChatTemplate, registerChatTemplate, type ChatTemplate } from "./chat-template.js";
export { Sampler } from "./sampler.js";
export { Llama2Error, InvalidArgumentError, isLlama2Error, type ErrorCode } from "./errors.js";
export { native as nativeAddon, type BuildInfo, type CudaDevice } from "./native.js";
export type * from "./types.js";
