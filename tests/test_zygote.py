"""The tests' fork server (``zygote.py``) answers as a fresh interpreter would, or hands the run to one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import python

pytestmark = pytest.mark.slow  # it starts Python processes

PROBE = """
import json, os, sys
print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "mark": os.environ.get("ZYGOTE_MARK"),
                  "path0": sys.path[0], "parent": os.getppid(), "rsst_loaded": "rsst" in sys.modules}))
sys.stderr.write("to stderr\\n")
"""
ENDINGS = {
    "finishes": "print('done')",
    "exits_3": "raise SystemExit(3)",
    "exits_with_text": "raise SystemExit('a message')",
    "raises": "raise ValueError('broken')",
    "interrupted": "raise KeyboardInterrupt",
    "killed": "import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
    "atexit": "import atexit; atexit.register(lambda: print('at exit'))",
}


def plain(script, *args, cwd, env):
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_child_ends_with_the_status_and_output_of_a_fresh_interpreter(ending, tmp_path):
    script = tmp_path / f"{ending}.py"
    script.write_text(ENDINGS[ending] + "\n")
    env = dict(os.environ)
    served, fresh = python(str(script), cwd=tmp_path, env=env), plain(script, cwd=tmp_path, env=env)
    assert (served.returncode, served.stdout) == (fresh.returncode, fresh.stdout)
    assert served.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]  # the traceback's last line, if any
    assert served.returncode == {"exits_3": 3, "exits_with_text": 1, "raises": 1, "interrupted": -2,
                                 "killed": -9}.get(ending, 0)  # fmt: skip


def test_a_child_takes_the_requests_folder_arguments_environment_and_path(tmp_path):
    import json

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    (tmp_path / "work").mkdir()
    env = {**os.environ, "ZYGOTE_MARK": "42"}
    served = python(str(script), "a", "b c", cwd=tmp_path / "work", env=env)
    seen = json.loads(served.stdout)
    assert seen["cwd"] == str(tmp_path / "work") and seen["argv"] == ["a", "b c"] and seen["mark"] == "42"
    assert seen["path0"] == str(tmp_path)  # the script's folder first, as python SCRIPT puts it
    assert seen["parent"] != os.getpid() and not seen["rsst_loaded"]  # forked by the server, which never loads rsst
    assert served.stderr == "to stderr\n"


def test_an_import_time_variable_that_differs_gets_a_fresh_interpreter(tmp_path):
    import json

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    threads = "3" if os.environ.get("OMP_NUM_THREADS") != "3" else "4"
    fresh = json.loads(python(str(script), cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": threads}).stdout)
    assert fresh["parent"] == os.getpid()  # started by this test process, not forked by the server


def test_after_this_processs_environment_changes_launches_are_still_served(tmp_path, monkeypatch):
    import json

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    python(str(script), cwd=tmp_path)  # the server exists
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))  # as torch.compile does in-process
    seen = json.loads(python(str(script), cwd=tmp_path).stdout)
    assert seen["parent"] != os.getpid()  # a new server, started from the changed environment, forked it
