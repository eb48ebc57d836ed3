"""One prepared command that checks metta's CUDA path and measures GPU training throughput.

    python benchmarks/gpu_check.py                      # on a GPU machine (about 7 minutes on one H100/H200)
    python benchmarks/gpu_check.py --tiny --device cpu  # the same checks at tiny sizes, on any CPU
    python benchmarks/gpu_check.py --only train_sps_default,run_py

Each check runs as its own subprocess with a time limit and prints one JSON line: ``check``, ``ok``,
``seconds``, and the check's own result (a benchmark's JSON line) or the end of its output when it failed.
A failing check never stops the others. The checks, in order:

- ``environment``: torch, CUDA, the GPU, and the packages metta imports;
- ``lscpu``: logical CPUs against physical cores, the worker count the GPU sizes pick and the CPUs the workers
  are pinned to;
- ``env_sps``: one core's MettaGrid throughput on the navigation curriculum (also compiles and caches the
  numba kernels once, before many processes need them);
- ``host_overhead``: ``benchmarks/host_overhead.py`` on the device: torch ops, scalar reads and host syncs per
  minibatch update and per rollout step (eager and as a CUDA graph), every synchronizing call listed by line
  (``torch.cuda.set_sync_debug_mode("warn")``);
- ``learn_micro``: ``benchmarks/learn_micro.py``: host and GPU ms of the padded LSTM replay vs the split one,
  the V-trace closed form vs the loop, fused vs multi-tensor Adam, on one real-shaped minibatch;
- ``inference_graph``: ``benchmarks/inference_graph.py``: the rollout step's device work for 4096 and 8192
  agents, eager vs CUDA graph;
- ``vecenv_wait``: ``benchmarks/vecenv_wait.py``: the vecenv alone with a learner that spins 1, 2 and 3.5 ms
  per batch: recv wait p50/p90/p99, with terrain maps built lazily and pre-built;
- ``device_tests``: ``tests/device`` with ``METTA_TEST_DEVICE`` set to the device (the advantage torch path
  against the CPU kernel, the LSTM with episode starts inside rows, a rollout into an Experience on the device
  that replays to its own log-probabilities, a checkpoint saved on the device and loaded on the CPU, the
  compiled policy against the eager one);
- ``run_py``: ``run.py`` on the device, a short run with an evaluation and a replay;
- ``torchrun``: ``torchrun --nproc_per_node=1 run.py`` (NCCL on a GPU, gloo on a CPU);
- ``train_sps_*``: ``benchmarks/train_sps.py`` at GPU sizes (2048 envs of 4 agents in multiprocessing workers for
  the machine's cores, async_factor 2, batch 524288, minibatch 16384, bptt 64, terrain sets pre-built, two warm-up
  iterations): the fast agent (upstream's, gpu_full_config's) as run.py builds it (the rollout step as a CUDA
  graph), then a torch profiler table of one rollout and one update, two torch threads in the learner,
  torch.compile (default and reduce-overhead), the bag form of the first convolution, 4096 envs, and the
  interface_default agent (LSTM 512).

The default and the correctness checks come first, then the host-overhead measurements, so a short budget
(``--budget-s``) drops variants, not them. The whole command takes about 7 minutes on one H100/H200.

Lines go to stdout and to ``{out}/gpu_check.jsonl``; every check's full output to ``{out}/gpu_check.log``.
``--out`` defaults to ``$OUT`` when set, else ``train_dir/gpu_check``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def train_sps_args(device: str, tiny: bool, workers: int, **overrides) -> list[str]:
    if tiny:
        # One torch thread: on a 2-core machine the learner's threads and two busy workers fight for the cores.
        sizes = {
            "num_envs": 8,
            "num_workers": 2,
            "async_factor": 2,
            "vectorization": "multiprocessing",
            "batch_size": 4096,
            "minibatch_size": 1024,
            "bptt_horizon": 16,
            "update_epochs": 1,
            "iterations": 1,
            "torch_threads": 1,
            "prebuild_maps": False,  # the suite's test runs this; building all 16 terrain sets cold takes a while
        }
    else:
        sizes = {
            "num_envs": 2048,
            "num_workers": workers,
            "async_factor": 2,
            "vectorization": "multiprocessing",
            "batch_size": 524288,
            "minibatch_size": 16384,
            "bptt_horizon": 64,
            "update_epochs": 1,
            "iterations": 3,
            "warmup_iterations": 2,  # steady state: allocator, graph captures, the first episodes' resets
        }
    sizes.update(overrides)
    args = ["benchmarks/train_sps.py", "--device", device]
    for key, value in sizes.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def host_overhead_args(device: str, tiny: bool) -> list[str]:
    args = ["benchmarks/host_overhead.py", "--device", device, "--top-ops", "25"]
    if tiny:
        args += ["--num-envs", "2", "--batch-size", "512", "--minibatch-size", "512", "--warmup-rollouts", "1"]
        args += ["--inference-agents", "16", "--torch-threads", "1"]
    return args


def vecenv_wait_args(tiny: bool, workers: int) -> list[str]:
    args = ["benchmarks/vecenv_wait.py", "--num-workers", str(workers), "--seconds", "5"]
    if tiny:  # the harness only: a map without terrain sets, so neither variant builds any
        args = ["benchmarks/vecenv_wait.py", "--curriculum", "/env/mettagrid/curriculum/simple", "--num-envs", "4"]
        args += ["--num-workers", "2", "--spin-ms", "1", "--seconds", "0.5"]
    return args


def checks(device: str, tiny: bool, workdir: Path) -> list[tuple[str, list[str] | None, dict, float, str]]:
    """``(name, argv or None for in-process, extra env, time limit in seconds, group)`` in the order they run."""
    from metta.common.cpus import usable_cpus

    workers = default_workers(usable_cpus())
    gpu = device.startswith("cuda")
    steps = 2048 if tiny else 32768
    run_args = [
        f"data_dir={workdir}",
        f"device={device}",
        f"trainer.total_timesteps={steps}",
        "trainer.update_epochs=1",
        "trainer.checkpoint.checkpoint_interval=1",
        "trainer.simulation.evaluate_interval=1",
    ]
    if tiny:
        run_args += ["num_envs=4", "trainer.batch_size=2048", "trainer.minibatch_size=512", "trainer.bptt_horizon=8"]
    else:
        run_args += [
            "num_envs=128",
            "trainer.batch_size=32768",
            "trainer.minibatch_size=4096",
            "trainer.bptt_horizon=16",
        ]
    device_tests = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/device"]
    if tiny:  # the suite runs all of tests/device on the CPU anyway; here, only prove the harness
        device_tests += ["-k", "advantage or host_upload"]
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [PYTHON, "-m", "torch.distributed.run"]
    # (name, argv, env, limit, group): checks of one group run at the same time (correctness checks, whose
    # timings do not matter); the benchmarks run alone.
    out: list[tuple[str, list[str] | None, dict, float, str]] = [
        ("environment", None, {}, 60, "environment"),
        (
            "env_sps",
            ["benchmarks/env_sps.py", "--workload", "navigation", "--seconds", "0.5" if tiny else "3"],
            {},
            120,
            "env_sps",
        ),
        ("lscpu", None, {}, 60, "lscpu"),
        ("train_sps_default", train_sps_args(device, tiny, workers), {}, 240, "train_sps_default"),
        ("device_tests", device_tests, {"METTA_TEST_DEVICE": device}, 240, "correctness"),
        ("run_py", ["run.py", "run=gpu_check_run", *run_args], {}, 300, "correctness"),
        (
            "torchrun",
            [
                *launcher,
                "--standalone",
                "--nproc_per_node=1",
                "run.py",
                "run=gpu_check_torchrun",
                *run_args,
                "evaluate=false",
            ],
            {},
            240,
            "correctness",
        ),
        ("host_overhead", host_overhead_args(device, tiny), {}, 240, "host_overhead"),
        (
            "learn_micro",
            ["benchmarks/learn_micro.py", "--device", device] + (["--rows", "4", "--repeats", "1"] if tiny else []),
            {},
            120,
            "learn_micro",
        ),
        (
            "inference_graph",
            ["benchmarks/inference_graph.py", "--device", device]
            + (["--agents", "16", "--steps", "2"] if tiny else []),
            {},
            120,
            "inference_graph",
        ),
        ("vecenv_wait", vecenv_wait_args(tiny, workers), {}, 240, "vecenv_wait"),
    ]
    if not tiny:
        out += [
            (
                "train_sps_profile",
                train_sps_args(device, tiny, workers, iterations=1, profile=True),
                {},
                180,
                "profile",
            ),
            (
                "train_sps_eager_rollout",
                train_sps_args(device, tiny, workers, no_cuda_graphs=True),
                {},
                180,
                "eager_rollout",
            ),
            ("train_sps_torch_threads_2", train_sps_args(device, tiny, workers, torch_threads=2), {}, 180, "threads"),
            ("train_sps_compile", train_sps_args(device, tiny, workers, compile=True), {}, 300, "compile"),
            (
                "train_sps_compile_reduce_overhead",
                train_sps_args(device, tiny, workers, compile=True, compile_mode="reduce-overhead"),
                {},
                300,
                "compile_ro",
            ),
            ("train_sps_bag_first_conv", train_sps_args(device, tiny, workers, first_conv="bag"), {}, 180, "bag"),
            (
                "train_sps_4096_envs",
                train_sps_args(device, tiny, workers, num_envs=4096, batch_size=1048576),
                {},
                240,
                "4096_envs",
            ),
            (
                "train_sps_interface_default_agent",
                train_sps_args(device, tiny, workers, agent="interface_default"),
                {},
                240,
                "agent",
            ),
        ]
    if not gpu:
        out = [c for c in out if not c[0].startswith("train_sps_compile")]
    return out


def environment_report(device: str) -> dict:
    import torch

    report: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cores": os.cpu_count()}
    report["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
        report["cuda"] = torch.version.cuda
        report["cudnn"] = torch.backends.cudnn.version()
        report["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
    missing = []
    for name in ("numpy", "numba", "pydantic", "omegaconf", "yaml", "gymnasium", "pettingzoo", "psutil", "rich"):
        try:
            module = importlib.import_module(name)
            report[name] = getattr(module, "__version__", "?")
        except ImportError:
            missing.append(name)
    for name in ("wandb", "heavyball", "tensorboard"):  # optional: wandb logging, the Muon optimizer, TB events
        report[f"optional_{name}"] = importlib.util.find_spec(name) is not None
    report["missing"] = missing
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} asked for, but torch sees no CUDA device")
    if missing:
        raise RuntimeError(f"missing packages: {missing} (benchmarks/gpu_wheels.sh downloads them)")
    return report


# Checks whose last stdout line is their benchmark's JSON result.
JSON_CHECKS = ("train_sps", "env_sps", "host_overhead", "learn_micro", "inference_graph", "vecenv_wait")


def default_workers(cores: int) -> int:
    """Env workers for the GPU sizes: the largest power of two up to the core count (it divides the 2048 envs and
    async_factor 2); with async_factor 2 half of them step while the learner works, so the learner keeps a core."""
    return max(2, 1 << (cores.bit_length() - 1))


def lscpu_report() -> dict:
    """Logical CPUs against physical cores (hyper-threads), the workers the GPU sizes pick, and where those
    workers are pinned (metta.mettagrid.vecenv.worker_cpus: never two on one CPU, the learner's core left free)."""
    from metta.common.cpus import usable_cpus
    from metta.mettagrid.vecenv import physical_cores, worker_cpus

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = physical_cores(allowed)
    usable = usable_cpus()  # the affinity cut by a cgroup CPU quota
    workers = default_workers(usable)
    report = {
        "logical_cpus": len(allowed),
        "usable_cpus": usable,
        "physical_cores": len(cores),
        "threads_per_core": max(len(core) for core in cores),
        "workers_default": workers,
        "worker_cpus": worker_cpus(workers),
    }
    lscpu = shutil.which("lscpu")
    if lscpu:
        lines = subprocess.run([lscpu], capture_output=True, text=True, timeout=30).stdout.splitlines()
        keep = ("Model name", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "CPU(s):", "NUMA node(s)")
        report["lscpu"] = {
            k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if k.startswith(keep)
        }
    return report


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_check(name: str, argv: list[str] | None, extra_env: dict, limit: float, device: str) -> tuple[dict, str]:
    """``(record, full output)`` of one check."""
    started = time.perf_counter()
    record: dict = {"check": name}
    if argv is None:
        try:
            record["result"] = lscpu_report() if name == "lscpu" else environment_report(device)
            record["ok"] = True
        except Exception as err:  # noqa: BLE001 - reported, the other checks still run
            record["ok"], record["error"] = False, str(err)
        record["seconds"] = round(time.perf_counter() - started, 1)
        return record, f"\n===== {name}\n{json.dumps(record)}\n"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    for key in ("METTA_RUN", "DATA_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = argv if not argv[0].endswith(".py") and argv[0] != "-m" else [PYTHON, *argv]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        output += (err.stderr or b"").decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        rc = "timeout"
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["rc"] = rc
    record["ok"] = rc == 0
    result = last_json_line(proc.stdout) if rc == 0 and name.startswith(JSON_CHECKS) else None
    if result is not None:
        record["result"] = result
    if name == "device_tests":
        summary = [line for line in output.splitlines() if " passed" in line or " failed" in line or " error" in line]
        record["summary"] = summary[-1] if summary else None
    if name in ("run_py", "torchrun") and rc == 0:
        record["result"] = run_summary(output)
        record["ok"] = record["result"].pop("ok")
    if not record["ok"]:
        record["tail"] = output[-3000:]
    return record, f"\n===== {name}: {' '.join(cmd)}\n{output}"


def run_summary(output: str) -> dict:
    """What a run.py check must show: it finished, and (run_py) evaluated and wrote a replay; (torchrun) joined
    the process group with the device's backend."""
    lines = output.splitlines()
    done = any(" done: epoch" in line for line in lines)
    # run.py logs each replay as its viewer page: "replay: file:///.../x.json.html"
    replays = [unquote(line.split("replay: file://", 1)[1].strip()) for line in lines if "replay: file://" in line]
    evaluations = [line for line in lines if "evaluation at epoch" in line]
    group = [line for line in lines if "joined the process group" in line]
    epochs = [line for line in lines if line.startswith("epoch")]
    summary = {
        "finished": done,
        "evaluations": len(evaluations),
        "replays": [p for p in replays if os.path.isfile(p)],
        "process_group": group[-1].split("INFO ")[-1] if group else None,
        "last_epoch_line": epochs[-1] if epochs else None,
    }
    if group:
        summary["ok"] = done
    else:
        summary["ok"] = done and len(evaluations) > 0 and len(summary["replays"]) > 0
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes (minutes on a CPU); skips the GPU-size variants"
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "train_dir" / "gpu_check"))
    parser.add_argument("--only", default="", help="comma-separated check names")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting checks after this long")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started = time.perf_counter()
    selected = [c for c in checks(args.device, args.tiny, workdir) if not args.only or c[0] in args.only.split(",")]
    groups: dict[str, list] = {}
    for check in selected:
        groups.setdefault(check[4], []).append(check)
    failed = 0
    with open(out / "gpu_check.log", "w") as log, open(out / "gpu_check.jsonl", "w") as jsonl:
        for members in groups.values():
            left = args.budget_s - (time.perf_counter() - started)
            if left < 20:
                results = [
                    ({"check": c[0], "ok": False, "skipped": f"budget of {args.budget_s:.0f} s spent"}, "")
                    for c in members
                ]
            else:
                with ThreadPoolExecutor(len(members)) as pool:
                    results = list(
                        pool.map(
                            lambda c, left=left: run_check(c[0], c[1], c[2], min(c[3], left), args.device), members
                        )
                    )
            for record, output in results:
                failed += not record["ok"]
                line = json.dumps(record)
                print(line, flush=True)
                jsonl.write(line + "\n")
                jsonl.flush()
                log.write(output)
                log.flush()
    shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
