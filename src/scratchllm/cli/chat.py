"""`scratchllm chat`: the verb, its terminal loop (streamed answers, Ctrl-C stops one, commands) and
its piped mode (a line in, an answer out)."""

from __future__ import annotations

import sys

from scratchllm.cli.base import add_config, parser_for, verb
from scratchllm.errors import ScratchLLMError


@verb('chat')
def add_chat(sub):
    p = parser_for(sub, "chat", "Chat with a model in the terminal; answers stream as they are decoded (Ctrl-C stops one). "
                "With standard input piped in, each line is a message and only the answers are printed.")
    from scratchllm.inference.config import ChatConfig

    flags = add_config(p, ChatConfig, exclude=("token_delay",))

    def run(args):
        from scratchllm.inference.chat import ChatSession, token_delay_from_env
        from scratchllm.inference.session import load_session

        cfg = flags.config(args, token_delay=token_delay_from_env())
        loaded = load_session(cfg.load.model, cfg.load.device, cfg.load.dtype, cfg.prompt_style,
                              quantize=cfg.load.quantize)
        session = ChatSession(loaded.model, loaded.tokenizer, loaded.style, cfg.settings)
        if not sys.stdin.isatty():
            return chat_piped(session, sys.stdin, sys.stdout)
        return chat_repl(session, loaded.name)

    p.set_defaults(func=run)


def chat_piped(session, stdin, out) -> int:
    """`scratchllm chat` driven by a script: each line of stdin is a user message (commands too),
    each answer is printed on one line (newlines inside it escaped as \\n), nothing else; notes and
    errors go to stderr. Returns 0 at end of input or /quit."""
    for line in stdin:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                result = session.handle(line)
                if result is None:
                    return 0
                print(f"[{result}]", file=sys.stderr)
                continue
            answer = "".join(session.send(line))
        except ScratchLLMError as exc:
            print(f"scratchllm chat: {exc}", file=sys.stderr)
            continue
        out.write(answer.replace("\\", "\\\\").replace("\n", "\\n") + "\n")
        out.flush()
    return 0


def chat_repl(session, name: str, stdin=None, out=None) -> int:
    """The terminal loop of `scratchllm chat` until /quit or end of input (Ctrl-D); returns the exit code.

    The answer streams as it is decoded. Ctrl-C during an answer stops it (the part shown is kept in
    the conversation); Ctrl-C at the prompt only prints a hint.
    """
    from scratchllm.inference.chat import ChatSession

    out = out or sys.stdout
    use_input = stdin is None and out is sys.stdout  # the terminal: input() gives line editing
    stdin = stdin or sys.stdin
    if use_input:
        try:
            import readline  # noqa: F401  (arrow keys and history for input())
        except ImportError:
            pass
        import signal
        import threading

        # A process started with SIGINT ignored (`nohup`, `cmd &` in a script) inherits that, and
        # Python then never raises KeyboardInterrupt: Ctrl-C could not stop an answer.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def read_line() -> str | None:
        if use_input:
            try:
                return input("you> ")
            except EOFError:
                return None
        out.write("you> ")
        out.flush()
        line = stdin.readline()
        return line.rstrip("\n") if line else None

    def note(text: str) -> None:
        out.write(f"[{text}]\n")
        out.flush()

    note(f"chatting with {name} (prompt style {session.style.name}, context {session.context_length} tokens); "
         f"commands: {ChatSession.COMMANDS}")
    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:
            out.write("\n")
            note("Ctrl-C stops an answer; type /quit or press Ctrl-D to leave")
            continue
        if line is None:  # end of input (Ctrl-D)
            out.write("\n")
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            try:
                result = session.handle(line)
            except ScratchLLMError as exc:
                note(str(exc))
                continue
            if result is None:
                return 0
            note(result)
            continue
        try:
            answer = session.send(line)
        except ScratchLLMError as exc:
            note(str(exc))
            continue
        if session.dropped:
            note(f"dropped the oldest {session.dropped} message(s) to fit the context of {session.context_length} tokens")
        out.write("bot> ")
        out.flush()
        pieces = iter(answer)
        try:
            for piece in pieces:
                out.write(piece)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            pieces.close()  # records the partial answer in the history
            out.write("\n")
            note(f"stopped after {answer.tokens} tokens")
        out.flush()
