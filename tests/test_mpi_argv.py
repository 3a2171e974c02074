"""MPI command lines: exact argv per launcher, and the per-rank gpu wrapper actually run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spoolbalsam.launch.mpi import (gpu_bind_script, job_argv, mpi_argv, rank_gpu_binding)
from spoolbalsam.launch.placement import NodePool
from spoolbalsam.launch.resources import Placement, Request
from spoolbalsam.machines import get_machine

DATA = Path(__file__).parent / "data"
AURORA = get_machine("aurora")
TILES = [f"{g}.{t}" for g in range(6) for t in range(2)]
PRINT_MASK = [sys.executable, "-c",
              "import os,sys; print(os.environ.get(sys.argv[1], '-'), *sys.argv[2:])"]


def aurora_pool() -> NodePool:
    return NodePool(AURORA.node_specs({"PBS_NODEFILE": str(DATA / "aurora_nodefile")}))


def test_exact_pals_argv_two_nodes_twelve_ranks_per_node():
    pool = aurora_pool()
    req = Request(num_nodes=2, ranks_per_node=12, threads_per_rank=1, gpus_per_rank=1)
    p = pool.place(req)
    argv = job_argv(AURORA, p, req, ["./hello_affinity", "--size", "1 GB"])
    assert argv == [
        "mpiexec", "-n", "24", "-ppn", "12",
        "--hosts", "x4102c5s0b0n0,x4102c5s1b0n0",
        "--cpu-bind", "list:1:2:3:4:5:6:7:8:9:10:11:12",
        "-d", "1",
        "--env", "OMP_NUM_THREADS=1",
        "--env", "ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE",
        "--env", "ZE_ENABLE_PCI_ID_DEVICE_ORDER=1",
        "--env", "SPOOL_GPU_ENV=ZE_AFFINITY_MASK",
        "--env", "SPOOL_LOCAL_RANK_VAR=PALS_LOCAL_RANKID",
        "--env", "SPOOL_RANK_GPUS=" + ";".join(TILES),
        "/bin/sh", gpu_bind_script(),
        "./hello_affinity", "--size", "1 GB",
    ]


def test_single_rank_job_gets_mask_directly_without_wrapper():
    pool = aurora_pool()
    req = Request(gpus_per_rank=2, node_packing_count=6, threads_per_rank=4, threads_per_core=2)
    pool.place(req)
    p = pool.place(req)
    argv = job_argv(AURORA, p, req, ["app"], env={"FOO": "a b,c"})
    assert gpu_bind_script() not in argv
    assert argv[argv.index("--cpu-bind") + 1] == "list:3,4,107,108"   # cores + hyperthreads
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert envs == ["OMP_NUM_THREADS=4", "ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE",
                    "ZE_ENABLE_PCI_ID_DEVICE_ORDER=1", "ZE_AFFINITY_MASK=1.0,1.1", "FOO=a b,c"]


def test_flat_hierarchy_uses_tile_ordinals_in_rank_slices():
    m = AURORA.with_overrides(tile_hierarchy="FLAT")
    req = Request(ranks_per_node=2, gpus_per_rank=2, node_packing_count=3)
    pool = NodePool(m.node_specs({"SPOOL_NODES": "x1"}))
    pool.place(req)
    argv = job_argv(m, pool.place(req), req, ["app"])
    assert "--env" in argv and "SPOOL_RANK_GPUS=4,5;6,7" in argv


def test_explicit_cpu_bind_and_launch_params_pass_through():
    req = Request(ranks_per_node=2)
    p = Placement(("h1",), ((1, 2),), ((),), 720720)
    argv = job_argv(AURORA, p, req, ["app"],
                    launch_params={"cpu_bind": "depth", "line_buffer": "", "mem-bind": "local"})
    i = argv.index("--cpu-bind")
    assert argv[i + 1] == "depth"
    assert argv[-4:] == ["--line-buffer", "--mem-bind", "local", "app"]


def test_hydra_argv_exact():
    argv = mpi_argv("hydra", hosts=["n1", "n2"], ranks_per_node=2, threads_per_rank=3,
                    cpu_bind="core", env={"A": "1", "B": "x y"},
                    launch_params={"launcher": "fork"}, command=["./a.out", "-v"])
    assert argv == ["mpiexec", "-n", "4", "-ppn", "2", "-hosts", "n1,n2", "-bind-to", "core",
                    "-genv", "A", "1", "-genv", "B", "x y", "-launcher", "fork", "./a.out", "-v"]


def test_srun_argv_exact_env_through_env_utility():
    argv = mpi_argv("srun", hosts=["n1", "n2"], ranks_per_node=2, threads_per_rank=4,
                    cpu_bind=None, env={"CUDA_VISIBLE_DEVICES": "0,1"},
                    launch_params={"overlap": ""}, command=["./a.out"])
    assert argv == ["srun", "-n", "4", "--ntasks-per-node", "2", "--nodes", "2",
                    "--nodelist", "n1,n2", "--cpus-per-task", "4", "--export=ALL",
                    "--overlap", "env", "CUDA_VISIBLE_DEVICES=0,1", "./a.out"]


@pytest.mark.parametrize("kw", [dict(flavour="aprun"), dict(hosts=[]), dict(command=[])])
def test_mpi_argv_rejects(kw):
    base = dict(flavour="pals", hosts=["h"], ranks_per_node=1, threads_per_rank=1,
                cpu_bind=None, env={}, launch_params={}, command=["x"])
    base.update(kw)
    flavour = base.pop("flavour")
    with pytest.raises(ValueError):
        mpi_argv(flavour, **base)


def test_rank_binding_collapses_identical_slices():
    assert rank_gpu_binding("pals", "ZE_AFFINITY_MASK", ["0.0", "0.0"]) == \
        ({"ZE_AFFINITY_MASK": "0.0"}, [])
    env, prefix = rank_gpu_binding("srun", "CUDA_VISIBLE_DEVICES", ["0", "1"])
    assert env["SPOOL_LOCAL_RANK_VAR"] == "SLURM_LOCALID" and prefix[-1] == gpu_bind_script()


# -- the wrapper, run for real ------------------------------------------------------
def test_gpu_bind_script_is_shipped_executable():
    path = Path(gpu_bind_script())
    assert path.is_file() and os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/bin/sh\n")


def fake_pals(argv: list[str], local_rank: int) -> str:
    """Run what PALS would run on one rank: set the --env pairs, exec the command."""
    assert argv[0] == "mpiexec"
    env = {"PATH": os.environ.get("PATH", ""), "PALS_LOCAL_RANKID": str(local_rank)}
    i = argv.index("-d") + 2
    while i < len(argv) and argv[i] == "--env":
        key, _, value = argv[i + 1].partition("=")
        env[key] = value
        i += 2
    out = subprocess.run(argv[i:], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_wrapper_gives_each_rank_its_tile_on_every_node():
    pool = aurora_pool()
    req = Request(num_nodes=2, ranks_per_node=12, gpus_per_rank=1)
    argv = job_argv(AURORA, pool.place(req), req, PRINT_MASK + ["ZE_AFFINITY_MASK", "a;b c"])
    seen = [fake_pals(argv, r) for r in range(12)]
    assert seen == [f"{t} a;b c" for t in TILES]


def test_wrapper_two_tiles_per_rank_and_shared_gpu():
    pool = aurora_pool()
    req = Request(ranks_per_node=6, gpus_per_rank=2)
    argv = job_argv(AURORA, pool.place(req), req, PRINT_MASK + ["ZE_AFFINITY_MASK"])
    assert [fake_pals(argv, r) for r in (0, 5)] == ["0.0,0.1", "5.0,5.1"]
    half = Request(ranks_per_node=4, gpus_per_rank=0.5)
    argv = job_argv(AURORA, pool.place(half), half, PRINT_MASK + ["ZE_AFFINITY_MASK"])
    assert [fake_pals(argv, r) for r in range(4)] == ["0.0", "0.0", "0.1", "0.1"]


@pytest.mark.parametrize("env, message", [
    ({"SLURM_LOCALID": "3"}, "no slice"),
    ({"SLURM_LOCALID": "x"}, "not a local rank"),
    ({}, "not a local rank"),
    ({"SLURM_LOCALID": "0", "SPOOL_GPU_ENV": "BAD-NAME"}, "not a variable name"),
])
def test_wrapper_refuses_inconsistent_input(env, message):
    base = {"PATH": os.environ.get("PATH", ""), "SPOOL_LOCAL_RANK_VAR": "SLURM_LOCALID",
            "SPOOL_RANK_GPUS": "0;1", "SPOOL_GPU_ENV": "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run(["/bin/sh", gpu_bind_script(), "true"], env={**base, **env},
                         capture_output=True, text=True)
    assert out.returncode == 127 and message in out.stderr


def test_srun_tail_runs_through_env_and_wrapper():
    m = get_machine("slurm").with_overrides(gpu_ids=["0", "1", "2", "3"])
    req = Request(ranks_per_node=2, gpus_per_rank=2)
    p = NodePool(m.node_specs({"SLURM_JOB_NODELIST": "n1"})).place(req)
    argv = job_argv(m, p, req, PRINT_MASK + ["CUDA_VISIBLE_DEVICES"])
    tail = argv[argv.index("env"):]            # what srun would exec on each task
    env = {"PATH": os.environ.get("PATH", ""), "SLURM_LOCALID": "1"}
    out = subprocess.run(tail, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2,3"


@pytest.mark.mpi
def test_hydra_mpiexec_binds_each_rank(tmp_path):
    if shutil.which("mpiexec") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs MPICH mpiexec")
        pytest.skip("no mpiexec")
    m = get_machine("local").with_overrides(gpu_ids=["0", "1", "2", "3"])
    req = Request(num_nodes=2, ranks_per_node=2, gpus_per_rank=2)
    p = NodePool(m.node_specs({"SPOOL_NODES": "fake1,fake2"})).place(req)
    script = ("import os, sys; e = os.environ; "
              "open(os.path.join(sys.argv[1], e['PMI_RANK']), 'w').write("
              "' '.join([e['MPI_LOCALRANKID'], e['CUDA_VISIBLE_DEVICES'], e['OMP_NUM_THREADS']]))")
    argv = job_argv(m, p, req, [sys.executable, "-c", script, str(tmp_path)])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = {f.name: f.read_text() for f in tmp_path.iterdir()}
    assert seen == {"0": "0 0,1 1", "1": "1 2,3 1", "2": "0 0,1 1", "3": "1 2,3 1"}
