"""An inconsistent launcher or scheduler environment is refused with the variable's name; a
pre-emption signal is recorded, not acted on in the handler."""

from __future__ import annotations

import os
import signal

import pytest

from foundation.train.distributed import LauncherEnvError, check_launcher_env
from foundation.train.preemption import Preemption

GOOD = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env", [
    GOOD,
    {},  # a plain `python`: one process
    {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2",
     "MASTER_ADDR": "localhost"},
    {**GOOD, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},  # torchrun under srun: the launcher's RANK wins
])
def test_consistent_environments_pass(env):
    check_launcher_env(env)


@pytest.mark.parametrize("change, variable", [
    ({"RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"RANK": "one"}, "RANK='one' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    ({"RANK": None}, "WORLD_SIZE is set but RANK is not"),
    ({"WORLD_SIZE": None}, "RANK is set but WORLD_SIZE is not"),
    ({"LOCAL_RANK": "1"}, "LOCAL_RANK=1 is not below LOCAL_WORLD_SIZE=1"),
    ({"LOCAL_WORLD_SIZE": "4"}, "LOCAL_WORLD_SIZE=4 exceeds WORLD_SIZE=2"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
    ({"MASTER_PORT": "-1"}, "MASTER_PORT=-1 must be >= 1"),
    ({"MASTER_ADDR": "no-such-host.invalid"}, "MASTER_ADDR='no-such-host.invalid' does not resolve"),
])
def test_inconsistent_environments_name_the_variable(change, variable):
    env = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(LauncherEnvError, match=variable.replace("(", r"\(").replace(")", r"\)")):
        check_launcher_env(env)


@pytest.mark.parametrize("env, variable", [
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"}, "SLURM_PROCID=4 is not below SLURM_NTASKS=4"),
    ({"SLURM_PROCID": "0"}, "SLURM_PROCID is set but SLURM_NTASKS is not"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "2", "SLURM_NTASKS_PER_NODE": "2(x2)"},
     "SLURM_LOCALID=2 is not below SLURM_NTASKS_PER_NODE=2"),
])
def test_inconsistent_slurm_environments_name_the_variable(env, variable):
    with pytest.raises(LauncherEnvError, match=variable.replace("(", r"\(").replace(")", r"\)")):
        check_launcher_env(env)


def test_the_cli_refuses_a_bad_environment_with_status_2(tmp_path, monkeypatch, capsys):
    from foundation.cli.pretrain import cli_main

    for key, value in {**GOOD, "RANK": "5"}.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "config.yaml"
    config.write_text("model: configs/model/tiny.yaml\nmax_steps: 1\ndatasets:\n  mp: {path: ../shared/data/"
                      "materials_project/summary.jsonl.gz, format: mp_summary, limit: 5}\n"
                      "tasks:\n  - {name: band_gap, target: band_gap}\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.chdir(root)
    assert cli_main(["--config", str(config), f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"]) == 2
    assert "launcher environment error: RANK=5 is not below WORLD_SIZE=2" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_is_recorded_and_the_old_handler_restored(name):
    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    with Preemption(["SIGTERM", "SIGUSR1"]) as p:
        assert p.requested is None
        os.kill(os.getpid(), sig)
        assert p.requested == name
        os.kill(os.getpid(), signal.SIGUSR1 if sig == signal.SIGTERM else signal.SIGTERM)
        assert p.requested == name  # the first signal is kept
    assert signal.getsignal(sig) is before


@pytest.mark.parametrize("bad", ["SIGKILL", "TERM", "SIGNOPE"])
def test_unknown_or_uncatchable_signals_are_config_errors(bad):
    from foundation.train.config import DistributedConfig

    with pytest.raises(ValueError, match=bad):
        DistributedConfig(preempt_signals=(bad,))
