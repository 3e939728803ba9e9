"""Running chat templates in a child process: the only way to stop a render that loops or allocates
without end is to stop the process it runs in (a thread cannot be stopped, and one C call such as
building a huge string never returns to Python to be interrupted).

`TemplateProcess` starts template_sandbox.py as a script with the interpreter that runs scratchllm,
waits until it is ready (its start, about 0.1-0.3 s, is not counted against a render), sends one JSON
request at a time and waits for the reply at most the render's time limit; past that, it kills the
process (the next request starts a new one) and raises TimeoutError. One process serves every template
of a memory limit (`template_process`); requests from several threads take turns. The child gets no
terminal signals (its own session), dies with its parent on Linux, and reads its end of input as the
sign to stop.
"""

from __future__ import annotations

import atexit
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from scratchllm.tokenizer.template_sandbox import read_frame, write_frame

SANDBOX = Path(__file__).with_name("template_sandbox.py")
START_TIMEOUT_S = 60.0  # a loaded machine may take seconds to start a Python process and import jinja2


class TemplateProcess:
    """One child process that renders templates with at most `memory_mb` MB (see the module docstring)."""

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._replies: queue.SimpleQueue | None = None
        self._owner = os.getpid()  # a forked copy of this object must not talk to its parent's child

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The child's reply to `request`. TimeoutError after `timeout_s` seconds (the child is then
        stopped); ChildProcessError when it cannot be started or ends without replying."""
        with self._lock:
            if self._owner != os.getpid():
                self._proc, self._replies, self._owner = None, None, os.getpid()
            # A child that ended between requests (killed from outside, or with the thread that started
            # it: see template_sandbox.die_with_parent) gets one new try; one started for this request
            # and ended by it (over its memory limit) is this request's error.
            for fresh in (False, True):
                if fresh or self._proc is None or self._proc.poll() is not None:
                    self._start()
                    fresh = True
                assert self._proc is not None and self._proc.stdin is not None and self._replies is not None
                try:
                    write_frame(self._proc.stdin, request)
                    reply = self._replies.get(timeout=timeout_s)
                except queue.Empty:
                    self._stop()
                    raise TimeoutError(f"no reply within {timeout_s:g} s") from None
                except OSError:  # the pipe broke: the child ended
                    reply = None
                if reply is not None:
                    return reply
                code = self._stop()
                if fresh:
                    raise ChildProcessError(f"its process ended without replying (exit code {code}; over the memory "
                                            f"limit of {self.memory_mb} MB?)")
            raise AssertionError("unreachable")

    def _start(self) -> None:
        self._stop()
        try:
            proc = subprocess.Popen([sys.executable, str(SANDBOX), str(self.memory_mb), str(os.getpid())],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as exc:
            raise ChildProcessError(f"cannot start a process for it ({sys.executable}: {exc})") from None
        replies: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:  # one reader per process: a reply (or None at the end) for each request
            assert proc.stdout is not None
            try:
                while (frame := read_frame(proc.stdout)) is not None:
                    replies.put(frame)
            except (OSError, ValueError):
                pass
            replies.put(None)

        threading.Thread(target=read, name="scratchllm-template-reader", daemon=True).start()
        self._proc, self._replies = proc, replies
        try:
            ready = replies.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            ready = None
        if ready != {"ready": True}:
            code = self._stop()
            raise ChildProcessError(f"its process did not start (exit code {code}; is jinja2 installed for "
                                    f"{sys.executable}?)")

    def _stop(self) -> int | None:
        """Kill the child if it runs; its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        return code

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (to watch its memory)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def close(self) -> None:
        with self._lock:
            self._stop()


_PROCESSES: dict[int, TemplateProcess] = {}
_REGISTRY_LOCK = threading.Lock()


def template_process(memory_mb: int) -> TemplateProcess:
    """The process that renders templates with a memory limit of `memory_mb` MB (started on first use)."""
    with _REGISTRY_LOCK:
        process = _PROCESSES.get(memory_mb)
        if process is None:
            process = _PROCESSES[memory_mb] = TemplateProcess(memory_mb)
        return process


@atexit.register
def _stop_all() -> None:
    for process in list(_PROCESSES.values()):
        if process._owner == os.getpid():
            process.close()
