"""Multi-process training through `accelerate launch` (medsynth.launch) - two CPU workers, gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from medsynth.launch import (
    SHUTDOWN_TIMEOUT_S,
    accelerate_command,
    in_worker,
    launch_processes,
    relaunch,
    resolve_device,
)

REPO = Path(__file__).resolve().parents[1]

#: what every worker trains: a linear least-squares problem (pasted into the worker scripts below)
LINEAR_PROBLEM = """torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Linear(3, 1)
x = torch.randn(64, 3); y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

def step(m, batch, s, g):
    return {"loss": ((m(batch["x"]) - batch["y"]) ** 2).mean()}
"""

WORKER = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, {repo!r})
    import torch
    from torch import nn
    from medsynth.launch import relaunch, is_main_process
    from medsynth.train import TrainConfig, train

    out = sys.argv[1]
    if relaunch(2):                       # the launching process: the workers did the work
        print("launcher done", flush=True)
        raise SystemExit(0)
    {linear_problem}
    import time
    import accelerate.accelerator
    _save_state_files = accelerate.accelerator.save_accelerator_state

    def late_rank1(*args, **kwargs):      # rank 1 writes its part of a checkpoint a second after rank 0
        if os.environ["RANK"] == "1":
            time.sleep(1.0)
        return _save_state_files(*args, **kwargs)

    accelerate.accelerator.save_accelerator_state = late_rank1

    result = train(model, step, {{"x": x, "y": y}}, TrainConfig(output_dir=out, steps=30, batch_size=8, lr=0.3,
                   checkpoint_every=0, progress=False, seed=1))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    with open(os.path.join(out, f"rank{{os.environ['RANK']}}.json"), "w") as fh:
        json.dump({{"weights": weights, "main": is_main_process(), "status": result.status}}, fh)
''')


def test_processes_come_from_the_stage_or_the_jobs_gpus():
    assert launch_processes({}, {"gpu": 4}) == 4
    assert launch_processes({"processes": 2}, {"gpu": 4}) == 2
    assert launch_processes({}, {}) == 1 and launch_processes(None, {"gpu": 0}) == 1
    cmd = accelerate_command("train.py", 3, mixed_precision="bf16", port=1234)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[-1] == "train.py"
    assert cmd[cmd.index("--num_processes") + 1] == "3" and cmd[cmd.index("--mixed_precision") + 1] == "bf16"


def test_config_device_names():
    import torch

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sampling.device is 'cuda'"):
            resolve_device("cuda", "sampling.device")


def test_one_process_or_a_worker_does_not_relaunch(monkeypatch):
    assert relaunch(1) is False
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert in_worker() and relaunch(4) is False


def test_two_workers_train_one_synchronised_model(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), linear_problem=LINEAR_PROBLEM))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launcher done" in proc.stdout
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["main"] for r in ranks] == [True, False]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas identical
    assert json.loads((out / "train_config.json").read_text())["processes"] == 2
    curve = pd.read_csv(out / "loss_curve.csv")
    assert len(curve) == 30 and curve["loss"].iloc[-1] < 0.2 * curve["loss"].iloc[0]
    assert (out / "final" / "model.safetensors").exists()
    # the final checkpoint holds both ranks' RNG states although rank 1 wrote its own last
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-000030"}
    assert (out / "checkpoints" / "step-000030" / "random_states_1.pkl").exists()


def _signal_when_ready(cmd: list[str], env: dict, markers: list[Path]) -> tuple[int, str]:
    """Start ``cmd``, send it SIGUSR1 once every marker file exists; its exit status and stderr."""
    import signal
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not all(m.exists() for m in markers) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(m.exists() for m in markers), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


PREEMPT_WORKER = textwrap.dedent('''
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    import torch
    from torch import nn
    from medsynth.launch import relaunch
    from medsynth.train import TrainConfig, train

    out, marker = sys.argv[1], sys.argv[2]
    if relaunch(2):
        raise SystemExit(0)
    {linear_problem}

    def slow(step, row):
        if marker != "-" and step == 3 and os.environ["RANK"] == "0":
            open(marker, "w").close()      # the test signals the launching process now
        if marker != "-":
            time.sleep(0.1)

    result = train(model, step, {{"x": x, "y": y}}, TrainConfig(output_dir=out, steps=200, batch_size=8, lr=0.05,
                   checkpoint_every=0, progress=False, seed=1), on_step_end=slow)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    with open(os.path.join(out, f"rank{{os.environ['RANK']}}.json"), "w") as fh:
        json.dump({{"weights": weights, "status": result.status, "step": result.step,
                   "grace": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT")}}, fh)
    raise SystemExit(result.exit_code)
''')


def test_a_signal_to_the_launcher_stops_every_worker_at_one_checkpoint(tmp_path):
    """SIGUSR1 to the launching process: forwarded to both workers, which agree on one step, checkpoint and
    stop; the launcher exits 75 and the rerun resumes to the same weights as an uninterrupted run."""

    script = tmp_path / "worker.py"
    script.write_text(PREEMPT_WORKER.format(repo=str(REPO), linear_problem=LINEAR_PROBLEM))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    marker = tmp_path / "marker"
    returncode, err = _signal_when_ready([sys.executable, str(script), str(tmp_path / "run"), str(marker)], env,
                                         [marker])
    assert returncode == 75, err[-3000:]
    assert all((tmp_path / "run" / f"rank{r}.json").exists() for r in (0, 1)), err[-5000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["preempted", "preempted"]
    assert ranks[0]["step"] == ranks[1]["step"] < 200  # both stopped after the same step
    assert ranks[0]["grace"] == str(SHUTDOWN_TIMEOUT_S)  # the launcher waits this long before SIGKILL
    assert (tmp_path / "run" / "checkpoints" / f"step-{ranks[0]['step']:06d}").is_dir()

    for name in ("run", "ref"):  # resume, and an uninterrupted reference run
        done = subprocess.run([sys.executable, str(script), str(tmp_path / name), "-"], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    resumed, ref = (json.loads((tmp_path / n / "rank0.json").read_text()) for n in ("run", "ref"))
    assert resumed["status"] == "completed" and resumed["weights"] == ref["weights"]
    assert len(pd.read_csv(tmp_path / "run" / "loss_curve.csv")) == 200


SPLIT_WORKER = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    from medsynth.launch import relaunch

    if relaunch(2):
        raise SystemExit(0)
    got = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    open(sys.argv[1] + os.environ["RANK"], "w").close()
    while not got:
        time.sleep(0.05)
    raise SystemExit(75 if os.environ["RANK"] == "0" else 3)   # rank 1 fails instead of checkpointing
''')


def test_a_worker_that_fails_after_a_signal_is_not_reported_as_preempted(tmp_path):
    """The launcher exits 1 after any forwarded signal; the launching process asks the workers: exit 3, not 75."""

    script = tmp_path / "split.py"
    script.write_text(SPLIT_WORKER.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    marker = tmp_path / "ready"
    returncode, err = _signal_when_ready([sys.executable, str(script), str(marker)], env,
                                         [Path(f"{marker}{r}") for r in (0, 1)])
    assert returncode == 3, err[-3000:]
    assert "exit status by rank {0: 75, 1: 3}" in err


def test_the_worker_entry_records_how_the_script_ended(tmp_path):
    from medsynth.launch_worker import read_statuses

    cases = {"done": "x = 1", "preempted": "raise SystemExit(75)", "message": "raise SystemExit('bad input')",
             "crash": "raise RuntimeError('boom')"}
    expected = {"done": 0, "preempted": 75, "message": 1, "crash": 1}
    for rank, (name, body) in enumerate(cases.items()):
        script = tmp_path / f"{name}.py"
        script.write_text(f"import sys\nassert sys.argv[1:] == ['a', 'b'] and sys.argv[0] == __file__\n{body}\n")
        env = {**os.environ, "RANK": str(rank), "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "medsynth.launch_worker", str(tmp_path), str(script), "a", "b"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == expected[name], done.stderr
    assert read_statuses(tmp_path) == {r: expected[n] for r, n in enumerate(cases)}
