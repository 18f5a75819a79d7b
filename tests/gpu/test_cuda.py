"""What only a CUDA machine can check: bf16 training, ZeRO-2 and ZeRO-3 with DeepSpeed's CUDA
(fused) Adam, NCCL collectives, the heartbeat under NCCL. Skipped, saying so, where no GPU is present;
run them wherever one is (`pytest tests/gpu -v`, also inside the image: docker/README.md).

Each runs the real pretraining entry point on the sample data (tiny model, a few steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from run_fixtures import ROOT, clean_env, one_node, sample_config  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: GPU tests skipped")

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
# this GPU's plain capability for DeepSpeed's fused-Adam JIT build (CUDA images may set `9.0a`, which it cannot parse)
ARCH = "{}.{}".format(*torch.cuda.get_device_capability(0)) if N_GPUS else ""


def _train(tmp_path: Path, nproc: int, *overrides: str, forces: bool = True) -> dict:
    datasets = ("oqmd", "mp", "lips", "oc22") if forces else ("oqmd", "mp")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(sample_config(tmp_path / "cache", 6, forces=forces, datasets=datasets)))
    run_dir = tmp_path / "run"
    proc = subprocess.run(one_node(config, nproc, f"run_dir={run_dir}", "distributed.device=cuda", *overrides),
                          env=clean_env(OMP_NUM_THREADS="4", TORCH_CUDA_ARCH_LIST=ARCH), capture_output=True, text=True, timeout=900, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_batches"] == 0
    assert (run_dir / "export/model.safetensors").is_file()
    return {"out": out, "summary": summary, "ds": json.loads((run_dir / "deepspeed_config.json").read_text())}


def test_bf16_training_on_one_gpu(tmp_path):
    result = _train(tmp_path, 1, "distributed.precision=bf16")
    assert result["ds"]["bf16"]["enabled"] and "on cuda:0 (nccl)" in result["out"]
    assert result["summary"]["peak_cuda_mib_per_rank"] > 0


@pytest.mark.parametrize("zero", [2, 3])
def test_zero_with_the_fused_cuda_adam(tmp_path, zero):
    nproc = min(2, N_GPUS)
    result = _train(tmp_path, nproc, f"distributed.zero_stage={zero}", "optimizer.torch_adam=false",
                    "distributed.precision=bf16", forces=zero < 3)
    assert result["ds"]["zero_optimization"]["stage"] == zero
    assert result["ds"]["optimizer"]["params"]["torch_adam"] is False


@pytest.mark.skipif(N_GPUS < 2, reason="NCCL across processes needs 2 GPUs")
def test_nccl_two_processes_and_resume(tmp_path):
    first = _train(tmp_path, 2, "distributed.zero_stage=2", "checkpoints.every=3")
    assert "2 rank(s) on cuda" in first["out"] and "(nccl)" in first["out"]
    again = subprocess.run(one_node(tmp_path / "config.yaml", 2, f"run_dir={tmp_path / 'run'}", "distributed.device=cuda",
                                    "distributed.zero_stage=2", "max_steps=8", "eval.at_start=false"),
                           env=clean_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert "resume: exact at step 6" in again.stdout + again.stderr
