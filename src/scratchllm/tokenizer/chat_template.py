"""Chat templates: a model's own Jinja template that lays a conversation out as its prompt text.

Instruction-tuned Hugging Face models (Llama 3.x, Qwen2.5/3, SmolLM2) ship the format they were
tuned on as a Jinja template (tokenizer_config.json "chat_template", or chat_template.jinja): it
writes the role markers (<|im_start|>user ... <|im_end|> for ChatML, <|start_header_id|>user
<|end_header_id|> ... <|eot_id|> for Llama 3) and, with `add_generation_prompt`, the header of the
assistant turn the model is to write. Templates come with downloaded models, so they are untrusted
code: they run in jinja2's `ImmutableSandboxedEnvironment`, set up as transformers'
`apply_chat_template` sets it up (trim_blocks and lstrip_blocks; `raise_exception`, `strftime_now`,
a `tojson` that keeps non-ASCII text; the special tokens of tokenizer_config.json, such as
`bos_token`, as variables), so a conversation renders to the same text as there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from scratchllm.errors import ScratchLLMError

# Stands for an assistant answer when finding what the template writes after one (see `turn_end`).
_ANSWER = "scratchllm-answer-7d1f"


def _compile(source: str) -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's text (transformers uses it for
        assistant-token masks); here it renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names, like attribute access in the sandbox."""

        def __init__(*args, **kwargs):
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters (<, >, &), which a prompt must keep as they are.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = Namespace
    return env.from_string(source)


class ChatTemplate:
    """A Jinja chat template with the variables its tokenizer gives it (bos_token, eos_token, ...)."""

    def __init__(self, source: str, variables: Mapping[str, str] | None = None, origin: str = "chat template"):
        if not isinstance(source, str):
            raise ScratchLLMError(f"{origin}: expected a Jinja template string, got {type(source).__name__}")
        self.source = source
        self.variables = dict(variables or {})
        self.origin = origin
        self._template: Any = None

    def _compiled(self) -> Any:
        if self._template is None:
            try:
                import jinja2
            except ImportError:
                raise ScratchLLMError("chat templates need jinja2: pip install jinja2") from None
            try:
                self._template = _compile(self.source)
            except jinja2.TemplateSyntaxError as exc:
                raise ScratchLLMError(f"{self.origin}: Jinja syntax error on line {exc.lineno}: {exc.message}") from None
        return self._template

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text of a conversation [{"role", "content"}, ...]; with `add_generation_prompt`
        it ends with the header of the assistant's next turn. `kwargs` are more template variables
        (they override the tokenizer's, as in transformers)."""
        import jinja2

        template = self._compiled()
        # Plain copies without None values (as transformers passes them): the template cannot change
        # the caller's messages, and `message.get("x") is none` tests behave the same.
        chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        try:
            return template.render(messages=chat, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                                   **{**self.variables, **kwargs})
        except jinja2.TemplateError as exc:  # raise_exception(...), a sandbox violation, an undefined call
            raise ScratchLLMError(f"{self.origin}: {type(exc).__name__}: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ScratchLLMError(f"{self.origin}: the template failed on these messages: {type(exc).__name__}: {exc}") from None

    def turn_end(self) -> str:
        """The text the template writes right after an assistant message ("<|im_end|>\\n" for ChatML,
        "<|eot_id|>" for Llama 3): what the model writes when its answer is done. Empty when the
        template renders no assistant message it can be found in."""
        for system in ([], [{"role": "system", "content": "S"}]):
            messages = [*system, {"role": "user", "content": "Q"}, {"role": "assistant", "content": _ANSWER}]
            try:
                text = self.render(messages, add_generation_prompt=False)
            except ScratchLLMError:
                continue
            if _ANSWER in text:
                return text[text.rindex(_ANSWER) + len(_ANSWER):]
        return ""
