"""A node process factory: one Python process that has imported everything a node daemon needs
forks the node daemons of a network (`python -m qkdnode.zygote`, started by `qkdnet up`).

Why: a node daemon's Python heap after its imports (asyncssh, aiohttp, grpc, cryptography,
libyang, lxml, prometheus_client, the project) is ~70 MB and takes ~1 s of CPU to build. Forked
from one process that built it once (and froze it out of the garbage collector, `gc.freeze`),
those pages are shared copy-on-write by every node of the network: on 50 nodes this divides both
the start-up CPU and the proportional memory (PSS) per node. Each forked node is an ordinary node
daemon (`qkdnode run --config FILE`) in its own process, with its own event loop, sockets and
files; only memory pages it never writes are shared.

Command line: `python -m qkdnode.zygote [--for DIR/network.json]`; `--for` only labels the
process (and so every node forked from it, which inherit its command line) with its network.

Protocol, JSON lines. The zygote prints `{"ready": true}` once it has imported everything. It
reads requests on stdin:

    {"spawn": ID, "argv": ["run", "--config", FILE], "log": FILE}

and answers with `{"id": ID, "pid": PID}`, then every line the node prints on its stdout as
`{"id": ID, "out": LINE}`, and `{"id": ID, "exit": CODE}` when it ends (a negative code: killed
by that signal). Errors: `{"id": ID, "error": MESSAGE}`.

Life cycle: every node runs in a session (and process group) of its own, as every process
`qkdnet up` starts does. The zygote ends its children (SIGTERM, then SIGKILL after
`STOP_GRACE_S`) and exits when its stdin closes or it gets SIGTERM/SIGINT. On Linux every child asks the kernel for SIGKILL
when the zygote dies (PR_SET_PDEATHSIG), and the zygote for SIGTERM when its own parent dies, so
no node outlives the `qkdnet up` that started it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

STOP_GRACE_S = 8.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> None:
    """Linux: deliver `sig` to this process when its parent exits (best effort elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def preload() -> None:
    """Import what a node daemon imports (and nothing that starts a thread or an event loop)."""
    import qkdnode.cli  # noqa: F401
    import qkdnode.daemon  # noqa: F401
    import qkdnode.eventloop  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        pass


def _run_child(argv: list[str], out_fd: int, log_fd: int) -> int:
    """In the forked child: become a plain node daemon process and run `qkdnode ARGV`."""
    os.setsid()  # its own session and process group, like every process qkdnet up starts
    _die_with_parent(signal.SIGKILL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, 65536)  # the zygote's selector, its other children's pipes, its stdin copy
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has them
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python's own: EPIPE as an exception, not death
    signal.set_wakeup_fd(-1)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = ["qkdnode", *argv]
    from qkdnode.cli import main

    return main(argv)


class Zygote:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, str] = {}  # pid -> id
        self.outputs: dict[int, tuple[str, bytes]] = {}  # read fd -> (id, partial line)
        self.stdin_buf = b""
        self.stopping = False
        self.launcher_gone = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    def say(self, msg: dict[str, Any]) -> None:
        if self.launcher_gone:
            return
        try:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()
        except OSError:  # the launcher is gone (its end of the pipe closed): stop, quietly
            self.launcher_gone = self.stopping = True
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more to say, at exit either

    # -- spawning ----------------------------------------------------------------------------------
    def spawn(self, req: dict[str, Any]) -> None:
        ident = str(req.get("spawn"))
        argv = [str(a) for a in req.get("argv", [])]
        try:
            log_fd = os.open(str(req["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except (KeyError, OSError) as exc:
            self.say({"id": ident, "error": f"cannot open the log: {exc}"})
            return
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the node
            code = 1
            try:
                os.close(r)
                code = int(_run_child(argv, w, log_fd) or 0)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(w)
        os.close(log_fd)
        os.set_blocking(r, False)
        self.children[pid] = ident
        self.outputs[r] = (ident, b"")
        self.sel.register(r, selectors.EVENT_READ, "child")
        self.say({"id": ident, "pid": pid})

    # -- events ------------------------------------------------------------------------------------
    def _child_output(self, fd: int) -> None:
        ident, buf = self.outputs[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if buf:
                self.say({"id": ident, "out": buf.decode(errors="replace")})
            self.sel.unregister(fd)
            os.close(fd)
            del self.outputs[fd]
            return
        buf += data
        *lines, rest = buf.split(b"\n")
        for line in lines:
            self.say({"id": ident, "out": line.decode(errors="replace")})
        self.outputs[fd] = (ident, rest)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ident = self.children.pop(pid, None)
            if ident is not None:
                # the node's last lines first: drain its pipe before reporting the exit
                for fd, (i, _) in list(self.outputs.items()):
                    if i == ident:
                        self._child_output(fd)
                self.say({"id": ident, "exit": os.waitstatus_to_exitcode(status)})

    def _stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(0)
            self.stopping = True
            return
        self.stdin_buf += data
        *lines, self.stdin_buf = self.stdin_buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                self.say({"id": None, "error": "not a JSON line"})
                continue
            if isinstance(req, dict) and "spawn" in req:
                self.spawn(req)
            else:
                self.say({"id": None, "error": "unknown request"})

    def _stop_children(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)

    def run(self) -> int:
        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.set_wakeup_fd(self.wake_w.fileno())
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.sel.register(self.wake_r.fileno(), selectors.EVENT_READ, "wake")
        self.say({"ready": True, "pid": os.getpid()})
        while not self.stopping:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "stdin":
                    self._stdin()
                elif key.data == "wake":
                    try:
                        self.wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                else:
                    self._child_output(key.fd)
            self._reap()
        self._stop_children()
        return 0


def main() -> int:
    _die_with_parent(signal.SIGTERM)
    from qkdnode.memory import tune

    tune()  # malloc settings, inherited by every node forked from here (qkdnode/memory.py)
    preload()
    gc.collect()
    gc.freeze()  # the imported heap stays out of the collector: its pages stay shared after fork
    return Zygote().run()


if __name__ == "__main__":
    sys.exit(main())
