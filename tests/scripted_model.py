"""A real (tiny) model whose generation is replaced by a scripted text: the server's output
parsing (reasoning, tool calls) end to end, on any route, with text the test chose."""
from __future__ import annotations

from forgert.completion import Completion, Usage

THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                     "{# thinks: <think> ... </think>; calls: <tool_call> ... </tool_call> #}")


class ScriptedModel:
    """A real model (tokenizer, context, template machinery) whose generation is a fixed text,
    streamed in 3-character pieces, so the parsing sees markers cut in every place."""

    def __init__(self, model, script: str, template: str = THINKING_TEMPLATE):
        self._model, self.script, self.chat_template = model, script, template
        self.model._model.chat_template = template

    @property
    def model(self):
        return self._model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def stream(self, prompt_ids, logprobs=None, response_format=None, **sampling):
        from forgert.model import TextStream

        def gen():
            for i in range(0, len(self.script), 3):
                yield self.script[i:i + 3]
            n = len(self._model.tokenize(self.script, add_bos=False))
            return Completion(self.script, [], "stop", Usage(len(prompt_ids), n, len(prompt_ids) + n))

        return TextStream(gen())
