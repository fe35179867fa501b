"""Start ``python launch.py ...`` for the tests without paying for torch's import each time.

Every ``launch.py`` the suite starts used to spend about 3.5 s of its 2 cores importing torch,
torch._dynamo (which the first optimizer pulls in), torchvision and Hydra before it read a single
override. This module is both ends of a fork server:

* run as a script (``python tests/zygote.py``), it imports those libraries once, then reads one JSON
  request a line on stdin and forks a child for each. The child takes the request's working folder,
  environment, argv and output files, and runs the script as ``__main__`` the way the interpreter
  would: ``SystemExit`` gives the exit status, an uncaught exception its traceback and status 1, an
  uncaught ``KeyboardInterrupt`` ends the process by SIGINT, and the atexit functions run. The
  server waits for the child and answers with its pid, then with its status, as ``subprocess``
  reports it (``-9`` for SIGKILL).
* imported, :class:`Zygote` is the client ``helpers.launch`` uses: one server per test process,
  started on first use.

The child is a real separate process running the real entry point; what it shares with the server
is only what was imported before the fork. So it is not used where that would change the run: the
project's own modules are never preloaded (their import-time reads happen in the child), and a
request whose environment changes a variable that a preloaded library reads when it is imported
(``OMP_*``, ``TORCH*``, ``CUDA*``, ...) is run as a plain subprocess instead (``usable_for``).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path

# Read when a preloaded library is imported (OpenMP/BLAS thread pools, torch's and CUDA's switches,
# the interpreter's own): a request that changes one of these is not served from the preloaded server.
IMPORT_TIME = re.compile(r"^(OMP_|GOMP_|KMP_|MKL_|OPENBLAS_|TORCH|PYTORCH_|CUDA|NCCL_|LD_|PYTHON(?!UNBUFFERED$|PATH$))")
_BASE_PATH: list[str] = []
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "torchvision.models",
    "numpy",
    "yaml",
    "tqdm",
    "hydra",
    "hydra.main",
    "hydra._internal.utils",
    "hydra._internal.hydra",
    "omegaconf",
)


# -- the server ------------------------------------------------------------------------------------------------


def _child(request: dict) -> None:
    """In the forked child: become ``python SCRIPT ARGS`` in the request's folder and environment; never returns."""
    import atexit
    import io
    import runpy
    import signal
    import threading
    import traceback

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_TRUNC),
        ):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=unbuffered
        )
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        argv = request["argv"]
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.abspath(p) for p in extra] + _BASE_PATH
        try:
            if argv[0] == "-m":  # python -m MODULE ARGS: the working folder first, argv[0] the module's file
                sys.path.insert(0, os.getcwd())
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:  # python SCRIPT ARGS: the script's folder first
                sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None:
                code = 0
            elif isinstance(stop.code, int):
                code = stop.code
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # what the interpreter does at exit: wait for the non-daemon threads
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if code == -signal.SIGINT:  # as Python itself ends on an uncaught KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code & 0xFF if code >= 0 else 1)


def serve() -> None:
    global _BASE_PATH
    own = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    _BASE_PATH = [p for p in sys.path[1:] if os.path.abspath(p) not in own]  # the interpreter's own entries
    for name in PRELOAD:
        __import__(name)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # nothing a library prints may reach the protocol
    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sys.stdin.close()
            answers.close()
            _child(request)
        answers.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


# -- the client ------------------------------------------------------------------------------------------------


class Zygote:
    """A fork server for this test process; ``run`` has ``subprocess.run``'s answer for ``python SCRIPT ARGS``."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._read(timeout=120)  # {"ready": pid}

    def usable_for(self, env: dict[str, str]) -> bool:
        """Whether a child of this server is the process ``env`` would start (no import-time variable differs)."""
        keys = set(env) | set(self.env)
        return self.proc.poll() is None and not any(
            IMPORT_TIME.match(k) and env.get(k) != self.env.get(k) for k in keys
        )

    def _read(self, timeout: float | None) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test fork server ended (exit {self.proc.wait()})")
        return json.loads(line)

    @staticmethod
    def serves(argv: list[str]) -> bool:
        """Whether ``python ARGV`` is a form the server runs: ``SCRIPT ARGS`` or ``-m MODULE ARGS``, no other flags."""
        return bool(argv) and (argv[0] == "-m" and len(argv) > 1 or not argv[0].startswith("-"))

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float):
        with tempfile.TemporaryDirectory(prefix="zygote-") as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            out.touch()
            err.touch()
            request = {"argv": list(argv), "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            pid = self._read(timeout=60)["pid"]
            try:
                returncode = self._read(timeout=timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, 9)
                self._read(timeout=60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text()) from None
            return subprocess.CompletedProcess(
                [sys.executable, *argv],
                returncode,
                out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    serve()
