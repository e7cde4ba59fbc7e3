// Dialogs the chat template tests share: a system prompt with spaces to strip, Python-only whitespace
// ("\x1c", "\u3000", "\ufeff": str.strip() and JavaScript's trim() disagree on them), CJK and emoji.
import type { ChatMessage } from "../../lib/types.js";

export const chatDialogs: ChatMessage[][] = [
  [{ role: "user", content: "Hi!" }],
  [
    { role: "system", content: "  Be brief. " },
    { role: "user", content: "Name a color." },
    { role: "assistant", content: " Blue.\n" },
    { role: "user", content: "\x1cAnother?\u3000" },
  ],
  [
    { role: "user", content: "你好" },
    { role: "assistant", content: "你好！有什么可以帮你的吗？" },
    { role: "user", content: "Write 2 haiku 🦙" },
    { role: "assistant", content: "Llamas graze at dawn\nsoft wool" },
    { role: "user", content: "\ufeffthanks" },
  ],
];
