"""`torchrun --nproc_per_node 2 tests/integration/heartbeat_run.py MODE`: the heartbeat on a bare process group.

finish: rank 1 leaves the run normally (teardown) while rank 0 waits in a barrier;
stop:   rank 1 freezes (SIGSTOP itself) while rank 0 waits in a barrier.
Rank 0 prints what it reports; the watchdog may also end it (exit 75)."""

import os
import signal
import sys
import time

from foundation.train.distributed import barrier, lost_rank_reason, setup, teardown

mode, timeout = sys.argv[1], float(sys.argv[2])
info = setup("cpu", 1800, heartbeat_timeout_s=timeout)
barrier(info)
t0 = time.time()
if info.rank == 1:
    if mode == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    teardown()
    sys.exit(0)
try:
    barrier(info)
    print("BARRIER PASSED", flush=True)
except Exception as exc:  # the peer's connections closed
    print(f"REPORT after {time.time() - t0:.1f} s: {lost_rank_reason(exc)}", flush=True)
    sys.exit(3)
