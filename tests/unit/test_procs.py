"""Side processes of the testbed are stopped with their whole process group, even when the
interpreter that started them is gone (pid files), and a crashed start is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecrl.testbed import procs


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(procs, "CACHE", tmp_path)
    return tmp_path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_stop_all_kills_the_group_including_grandchildren(cache: Path) -> None:
    # The child starts a grandchild and prints its pid: both must go.
    script = "import subprocess,sys,time; p=subprocess.Popen(['sleep','300']); print(p.pid, flush=True); time.sleep(300)"
    proc = procs.start("t", "side", [sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while not proc.log.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(proc.log.read_text().split()[0])
    assert procs.running("t") == ["side"]
    assert procs.stop_all("t") == ["side"]
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(proc.pid) and not alive(grandchild)
    assert procs.running("t") == [] and not list(procs.run_dir("t").glob("*.pid"))


def test_pid_file_lets_another_interpreter_stop_it(cache: Path) -> None:
    proc = procs.start("t", "orphan", ["sleep", "300"])
    code = (
        "import sys; from pathlib import Path; from ecrl.testbed import procs; "
        f"procs.CACHE = Path({str(cache)!r}); print(procs.stop_all('t'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "orphan" in out.stdout
    deadline = time.monotonic() + 10
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proc.alive()


def test_wait_http_reports_a_process_that_died_with_its_log(cache: Path) -> None:
    proc = procs.start(
        "t", "broken", [sys.executable, "-c", "print('bad flag'); raise SystemExit(2)"]
    )
    with pytest.raises(procs.ProcessError, match="bad flag"):
        procs.wait_http(proc, "http://127.0.0.1:9/", timeout_s=10)
    procs.stop_all("t")


def test_wait_until_returns_the_first_truthy_answer() -> None:
    answers = iter([None, [], ["ready"]])
    assert procs.wait_until("ready", lambda: next(answers), 5.0, 0.01) == ["ready"]


def test_wait_until_probes_once_more_at_the_deadline_then_names_what_it_waited_for() -> None:
    calls: list[float] = []

    def probe() -> int:
        calls.append(time.monotonic())
        return 0

    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"the pod bound: not within 0.2 s \(last: 0\)"):
        procs.wait_until("the pod bound", probe, 0.2, 0.15)
    assert len(calls) >= 2 and calls[-1] - start >= 0.2  # the last probe at the deadline
