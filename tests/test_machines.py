"""Machine descriptions: registry, node discovery, gpu environment, settings overrides."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from spoolbalsam.machines import MACHINES, get_machine
from spoolbalsam.machines.base import (Machine, QueueLimits, expand_slurm_nodelist,
                                       parse_nodefile)

DATA = Path(__file__).parent / "data"


def test_registry_names_and_unknown_machine():
    assert set(MACHINES) == {"local", "aurora", "polaris", "slurm"}
    assert all(get_machine(n).name == n for n in MACHINES)
    with pytest.raises(ValueError, match="known: aurora, local, polaris, slurm"):
        get_machine("theta")


def test_aurora_description():
    m = get_machine("aurora")
    assert (m.scheduler, m.mpi_flavour, m.gpu_env) == ("pbs", "pals", "ZE_AFFINITY_MASK")
    assert m.cpus_per_node == 104 and len(m.gpu_ids) == 12
    assert m.gpu_ids[0] == "0.0" and m.gpu_ids[-1] == "5.1"
    assert m.queues["debug"] == QueueLimits(2, 60, 1)
    assert m.queues["debug-scaling"] == QueueLimits(31, 60, 1)
    assert m.queues["prod"] == QueueLimits(2048, 1080, 100)
    assert m.max_mpiexec_per_batch_job == 1000 and m.max_concurrent_mpiruns == 1000
    assert m.tile_hierarchy == "COMPOSITE"
    assert 0 not in m.cpu_ids and 52 not in m.cpu_ids and len(m.cpu_ids) == 102


def test_polaris_and_generic_descriptions():
    p = get_machine("polaris")
    assert (p.cpus_per_node, sorted(p.gpu_ids), p.gpu_env) == \
        (32, ["0", "1", "2", "3"], "CUDA_VISIBLE_DEVICES")
    assert p.queues == {"debug": QueueLimits(2, 60, 100), "prod": QueueLimits(496, 1440, 100),
                        "preemptable": QueueLimits(10, 4320, 20)}
    s, loc = get_machine("slurm"), get_machine("local")
    assert (s.scheduler, s.mpi_flavour, s.gpu_ids, list(s.queues)) == \
        ("slurm", "srun", (), ["debug"])
    assert (loc.scheduler, loc.mpi_flavour, list(loc.queues)) == ("local", "hydra", ["local"])
    assert loc.cpus_per_node == (os.cpu_count() or 1)


def test_pbs_nodefile_recorded_and_with_repeats(tmp_path):
    m = get_machine("aurora")
    names = m.node_names({"PBS_NODEFILE": str(DATA / "aurora_nodefile")})
    assert names[0] == "x4102c5s0b0n0" and len(names) == 8
    f = tmp_path / "nodefile"
    f.write_text("x1c0s0b0n0\nx1c0s0b0n0\n\nx1c0s1b0n0\nx1c0s0b0n0\n x1c0s2b0n0 \n")
    assert m.node_names({"PBS_NODEFILE": str(f)}) == ["x1c0s0b0n0", "x1c0s1b0n0", "x1c0s2b0n0"]
    assert parse_nodefile("b\na\nb\n") == ["b", "a"]


@pytest.mark.parametrize("text, expected", [
    ("n[1-4]", ["n1", "n2", "n3", "n4"]),
    ("a[01-03,7],b5", ["a01", "a02", "a03", "a7", "b5"]),
    ("nid001234", ["nid001234"]),
    ("host-a,host-b", ["host-a", "host-b"]),
    ("a[08-10]", ["a08", "a09", "a10"]),
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
    ("n[3],n3,m", ["n3", "m"]),
])
def test_slurm_nodelist_expansion(text, expected):
    assert expand_slurm_nodelist(text) == expected


@pytest.mark.parametrize("bad", ["n[1-4", "n1-4]", "n[4-1]", "n[a-b]"])
def test_slurm_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        expand_slurm_nodelist(bad)


def test_node_sources_and_precedence():
    s = get_machine("slurm")
    assert s.node_names({"SLURM_JOB_NODELIST": "n[1-2]"}) == ["n1", "n2"]
    assert s.node_names({"SLURM_NODELIST": "n[3-4]"}) == ["n3", "n4"]
    assert s.node_names({"SPOOL_NODES": "a, b,a", "SLURM_JOB_NODELIST": "n1"}) == ["a", "b"]
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        s.node_names({})
    with pytest.raises(ValueError, match="PBS_NODEFILE"):
        get_machine("aurora").node_names({})
    assert get_machine("local").node_names({}) == [socket.gethostname()]


def test_node_specs_carry_machine_ids():
    specs = get_machine("aurora").node_specs({"SPOOL_NODES": "a,b"})
    assert [s.name for s in specs] == ["a", "b"]
    assert specs[0].cpu_ids[:2] == (1, 2) and specs[0].gpu_ids == get_machine("aurora").gpu_ids


def test_gpu_env_composite_flat_and_cuda():
    a = get_machine("aurora")
    assert a.gpu_env_for(("0.0", "0.1")) == {"ZE_AFFINITY_MASK": "0.0,0.1",
                                             "ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE",
                                             "ZE_ENABLE_PCI_ID_DEVICE_ORDER": "1"}
    flat = a.with_overrides(tile_hierarchy="FLAT")
    assert flat.gpu_env_for(("0.1", "5.1"))["ZE_AFFINITY_MASK"] == "1,11"
    assert flat.gpu_env_for(("2.0",))["ZE_FLAT_DEVICE_HIERARCHY"] == "FLAT"
    assert a.gpu_env_for(()) == {}
    p = get_machine("polaris")
    assert p.gpu_env_for(("3", "2")) == {"CUDA_VISIBLE_DEVICES": "3,2",
                                         "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_with_overrides_coerces_and_rejects():
    a = get_machine("aurora")
    b = a.with_overrides(cpus_per_node="52", gpu_ids=["0", "1"], max_mpiexec_per_batch_job=None,
                         max_concurrent_mpiruns=8, mpi_flavour="hydra")
    assert (b.cpus_per_node, b.gpu_ids, b.max_mpiexec_per_batch_job, b.mpi_flavour) == \
        (52, ("0", "1"), None, "hydra")
    assert b.reserved_cpu_ids == (0,)        # 52 no longer exists
    assert a.cpus_per_node == 104            # the registry entry is untouched
    with pytest.raises(ValueError, match="cannot override scheduler"):
        a.with_overrides(scheduler="slurm")
    with pytest.raises(ValueError, match="mpi_flavour"):
        a.with_overrides(mpi_flavour="aprun")
    with pytest.raises(ValueError, match="tile_hierarchy"):
        a.with_overrides(tile_hierarchy="SPLIT")
    with pytest.raises(ValueError, match="GPU.TILE"):
        a.with_overrides(tile_hierarchy="FLAT", gpu_ids=["0.7"])


def test_machine_validation():
    kw = dict(name="x", scheduler="pbs", cpus_per_node=4, gpu_ids=(), mpi_flavour="pals",
              gpu_env="", queues={"q": QueueLimits(1, 1, 1)}, job_template="t")
    Machine(**kw)
    for bad in [dict(scheduler="lsf"), dict(cpus_per_node=0), dict(queues={}),
                dict(gpu_ids=("0",)), dict(reserved_cpu_ids=(4,)),
                dict(reserved_cpu_ids=(0, 1, 2, 3))]:
        with pytest.raises(ValueError):
            Machine(**{**kw, **bad})
