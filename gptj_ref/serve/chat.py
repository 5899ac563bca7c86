"""Chat messages -> one prompt, through a Jinja template.

GPT-J was trained on plain text and has no chat format of its own, so the default template writes a
plain dialogue the base model can continue:

    {system message}            (when there is one, followed by a blank line)
    User: {message}
    Assistant: {message}
    ...
    Assistant:                  (the generation prompt: the model writes the reply after it)

and generation stops at the next "\\nUser:" (the model would otherwise write the user's next turn too).
A fine-tune trained on another format gives its own template with `--chat-template FILE`: Jinja source
that sees `messages` (a list of {"role", "content"}) and `add_generation_prompt` (true), the variables
Hugging Face chat templates use; a custom template adds no stop strings of its own.
Templates run in Jinja's sandbox.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message.role == 'system' %}{{ message.content }}\n\n"
    "{% elif message.role == 'user' %}User: {{ message.content }}\n"
    "{% elif message.role == 'assistant' %}Assistant: {{ message.content }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_CHAT_STOP = ("\nUser:",)
ROLES = ("system", "developer", "user", "assistant")  # "developer" is OpenAI's newer name for system


class ChatTemplate:
    def __init__(self, source: Optional[str] = None):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = DEFAULT_CHAT_TEMPLATE if source is None else source
        self.stop: Tuple[str, ...] = DEFAULT_CHAT_STOP if source is None else ()
        try:
            self._template = ImmutableSandboxedEnvironment().from_string(self.source)
        except TemplateError as e:
            from ..errors import SettingsError

            raise SettingsError(f"the chat template is not valid Jinja: {e}") from None

    def render(self, messages: List[dict]) -> str:
        """messages: [{"role": "system" | "developer" | "user" | "assistant", "content": str}, ...]."""
        plain = [
            {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages
        ]
        return self._template.render(messages=plain, add_generation_prompt=True)
