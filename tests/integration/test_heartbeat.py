"""The heartbeat on a bare 2-process group: a rank that finished while another waits is named, a
frozen rank (no connection drops) ends the waiting one within the timeout, exit 75."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_fixtures import clean_env, free_port, kill_tree

from foundation.train.watchdog import EXIT_LOST_RANK

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("heartbeat_run.py")


def _launch(mode: str, timeout: float) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(SCRIPT), mode, str(timeout)]
    return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True), time.time()


def test_a_rank_that_finished_is_named_by_the_one_still_waiting():
    proc, t0 = _launch("finish", 6)
    out, _ = proc.communicate(timeout=120)
    assert "rank 1 (host" in out and "finished its run while this rank was still in it" in out, out[-3000:]
    assert "BARRIER PASSED" not in out


def test_a_frozen_rank_ends_the_waiting_one_within_the_timeout():
    proc, t0 = _launch("stop", 6)
    lines: list[str] = []
    try:
        for line in proc.stdout:  # until rank 0 has exited with its report
            lines.append(line)
            if "has sent no heartbeat" in line or time.time() - t0 > 90:
                break
        took = time.time() - t0
        time.sleep(0.5)
    finally:
        kill_tree(proc.pid)  # the frozen rank (torchrun would SIGKILL it only after 30 s)
        proc.wait()
    out = "".join(lines)
    assert "has sent no heartbeat" in out and "rank 1 (host" in out, out[-3000:]
    assert f"exit {EXIT_LOST_RANK}" in out and took < 60, took
