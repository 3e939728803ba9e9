"""Limits on what a model directory's own code may cost: its chat template is a Jinja program that comes
with the model (tokenizer/chat_template.py runs it in a child process under these limits). One option
group, declared here at the bottom so that the tokenizer that enforces it and the verbs that expose it
(`chat`, `serve`: --template-timeout-s, ...) both see it; torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.errors import ScratchLLMError


@dataclass(kw_only=True)
class TemplateLimits:
    """What rendering a chat template may cost, per prompt. Real templates take about a millisecond, a
    few kB of text and a few MB; these stop one that loops, writes without end or allocates without end."""

    template_timeout_s: float = 2.0
    """seconds a chat template may run for one prompt; its process is stopped after that"""
    template_max_chars: int = 1_000_000
    """most characters a chat template may write for one prompt"""
    template_memory_mb: int = 256
    """most memory (MB of address space) the chat template's process may use (Linux and macOS)"""

    def check_template_limits(self) -> None:
        """Raise a one-line ScratchLLMError for a limit outside its range."""
        t = self.template_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 3600:
            raise ScratchLLMError(f"template_timeout_s must be a number of seconds in (0, 3600], got {t!r}")
        for name, low in (("template_max_chars", 1), ("template_memory_mb", 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ScratchLLMError(f"{name} must be an integer >= {low}, got {value!r}")

    def template_limits(self) -> TemplateLimits:
        """These limits alone (a config that composes this group gives just its part)."""
        self.check_template_limits()
        return TemplateLimits(template_timeout_s=self.template_timeout_s, template_max_chars=self.template_max_chars,
                              template_memory_mb=self.template_memory_mb)
