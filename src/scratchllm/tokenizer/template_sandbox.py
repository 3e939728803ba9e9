"""The process a chat template runs in: a Jinja sandbox set up as transformers' `apply_chat_template`
sets it up, inside a child process with a memory limit, answering render requests over its pipes.

template_process.py starts it as a script (`python template_sandbox.py MEMORY_MB PARENT_PID`), so it
imports only the standard library and jinja2, never scratchllm (nor numpy, nor torch): it starts in a
fraction of a second and its address space holds little beside the template. The parent stops it when
a render outlasts its time limit; here the memory limit is set (RLIMIT_AS, where the platform has it)
and output is counted as it is written, so a template cannot loop, allocate or write without end.

Requests and replies are JSON frames (a 4-byte big-endian length, then UTF-8 JSON; never pickle, so a
hostile template cannot make the parent run code):
    {"op": "compile", "source"}                          -> {"ok": true} | {"error", "raised"}
    {"op": "render", "source", "variables", "messages",
     "add_generation_prompt", "extra", "max_chars"}      -> {"text"} | {"error", "raised"}
"error" is one line saying what went wrong (the caller adds which template); "raised" is true when the
template refused the messages itself with raise_exception(...). jinja2 is imported only where the
sandbox is built, so the parent imports the framing from here without it.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from collections import OrderedDict
from datetime import datetime
from typing import Any, BinaryIO

_LENGTH = struct.Struct(">I")
_COMPILED_KEPT = 8  # templates kept compiled (a server renders one; tests several)
_MAX_EXPONENT_BITS = 65_536  # `**` whose result would be larger than this many bits is refused


def read_frame(stream: BinaryIO) -> Any:
    """The next JSON frame of `stream`, or None at its end."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    body = stream.read(_LENGTH.unpack(head)[0])
    return json.loads(body.decode("utf-8"))


def write_frame(stream: BinaryIO, value: Any) -> None:
    # ensure_ascii: a lone surrogate (possible in a message) travels as an escape, not as invalid UTF-8
    body = json.dumps(value, ensure_ascii=True).encode("ascii")
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


class Refused(Exception):
    """raise_exception(message): the template refuses these messages."""


class OutputLimit(Exception):
    """The template wrote (or built a string or list) past the output limit."""


def make_environment() -> Any:
    """The sandbox: jinja2's immutable sandbox (`LimitedEnvironment`), with the helpers transformers
    gives templates: trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson` that
    keeps non-ASCII and HTML characters, loop controls, `{% generation %}` and a `namespace` without
    underscore names."""
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

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        """The immutable sandbox with `*`, `+` and `**` checked before they run: a string or list longer
        than the output limit (`'x' * 10**9`), or a number of more than 65,536 bits, is refused instead
        of being built. Everything else that grows (filters, `~`) meets the memory limit."""

        intercepted_binops = frozenset({"*", "+", "**"})
        max_chars = 1_000_000  # set per request

        def call_binop(self, context, operator, left, right):
            sized = (str, list, tuple)
            if operator == "*":
                seq, times = (left, right) if isinstance(left, sized) else (right, left)
                if isinstance(seq, sized) and isinstance(times, int) and len(seq) * times > self.max_chars:
                    raise OutputLimit(f"'*' would build {len(seq) * times:,} items")
            elif operator == "+":
                if isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > self.max_chars:
                    raise OutputLimit(f"'+' would build {len(left) + len(right):,} items")
            elif isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * abs(left).bit_length() > _MAX_EXPONENT_BITS:
                    raise OverflowError(f"'**' would build a number of more than {_MAX_EXPONENT_BITS:,} bits (a "
                                        f"{abs(left).bit_length():,}-bit number to the power {right:,})")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise Refused(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters (<, >, &), which a prompt must keep as they are.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = Namespace
    return env


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, request: dict, memory_mb: int) -> dict:
    """The reply for an exception: {"error": one line, "raised": whether raise_exception raised it,
    "limit": whether it ran past a limit}."""
    import jinja2

    if isinstance(exc, Refused):
        return {"error": one_line(exc.args[0] if exc.args else ""), "raised": True}
    if isinstance(exc, jinja2.TemplateSyntaxError):
        cause = f"Jinja syntax error on line {exc.lineno}: {exc.message}"
    elif isinstance(exc, OutputLimit):
        cause = f"its output passed the limit of {request.get('max_chars', 0):,} characters ({exc}) (template_max_chars)"
    elif isinstance(exc, MemoryError):
        cause = f"it used more than the memory limit of {memory_mb} MB (template_memory_mb)"
    elif isinstance(exc, RecursionError):
        cause = "RecursionError: it nests or calls itself too deeply"
    elif isinstance(exc, jinja2.TemplateError):  # a sandbox violation, an undefined name or call
        cause = f"{type(exc).__name__}: {exc}"
    else:  # TypeError, OverflowError (range() over 100,000 items), ... on these messages
        cause = f"the template failed on these messages: {type(exc).__name__}: {exc}"
    return {"error": one_line(cause), "raised": False, "limit": isinstance(exc, (OutputLimit, MemoryError))}


class Renderer:
    """Compiles and renders templates, keeping the last few compiled."""

    def __init__(self, memory_mb: int):
        self.env = make_environment()
        self.memory_mb = memory_mb
        self.compiled: OrderedDict[str, Any] = OrderedDict()

    def template(self, source: str) -> Any:
        if source in self.compiled:
            self.compiled.move_to_end(source)
            return self.compiled[source]
        template = self.env.from_string(source)
        self.compiled[source] = template
        if len(self.compiled) > _COMPILED_KEPT:
            self.compiled.popitem(last=False)
        return template

    def handle(self, request: dict) -> dict:
        try:
            template = self.template(request["source"])
            if request["op"] == "compile":
                return {"ok": True}
            self.env.max_chars = max_chars = request["max_chars"]
            chunks, size = [], 0
            variables = {**request["variables"], **request["extra"]}
            for chunk in template.generate(messages=request["messages"], tools=None, documents=None,
                                           add_generation_prompt=request["add_generation_prompt"], **variables):
                size += len(chunk)
                if size > max_chars:
                    raise OutputLimit(f"{size:,} characters so far")
                chunks.append(chunk)
            return {"text": "".join(chunks)}
        except BaseException as exc:  # noqa: BLE001 (whatever the template did is reported, and the process goes on)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return describe(exc, request, self.memory_mb)


def limit_memory(memory_mb: int) -> None:
    """At most `memory_mb` MB of address space (a MemoryError beyond), where the platform allows it."""
    try:
        import resource
    except ImportError:  # Windows: the time limit still holds
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = memory_mb << 20
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError):  # a platform that does not enforce it (macOS may refuse)
        pass


def die_with_parent(parent: int) -> None:
    """End this process when the parent ends, even in the middle of a render (Linux: PR_SET_PDEATHSIG;
    elsewhere the end of stdin ends it between renders, and the parent stops it on a timeout). The
    signal comes when the parent *thread* that started it ends; the parent then starts a new one."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent ended before that was set
        os._exit(0)


def main(argv: list[str]) -> int:
    memory_mb, parent = int(argv[0]), int(argv[1])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for the parent
    limit_memory(memory_mb)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    renderer = Renderer(memory_mb)
    write_frame(stdout, {"ready": True})
    while (request := read_frame(stdin)) is not None:
        write_frame(stdout, renderer.handle(request))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
