"""Stand-ins shared by unit tests (a plain module: not collected)."""
from __future__ import annotations


class CharTokenizer:
    """Characters as ids; ``<|im_end|>`` is id 2 (also the EOS id). The chat template is the
    messages' contents, concatenated."""

    eos_token_id, unk_token_id = 2, None

    def convert_tokens_to_ids(self, token):
        return 2

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=False):
        return "".join(m["content"] for m in messages)

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)
