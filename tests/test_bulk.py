"""Bulk drops (``site.bulk``): many jobs in one file, taken in whole or rejected whole, and
``spool job create --file`` / ``bulk_create``, which write them."""
from __future__ import annotations

import json


from spoolbalsam import submit
from spoolbalsam.site.intake import parents_first
from spoolbalsam.spool import fsio, index
from spoolbalsam.spool.query import Filter, count, select

from helpers import (drop, ids_in, kill9, layout, pid_alive, rejected_entries, site_obj, spool, start_site, stop_site, wait_for)


def lines(jobs: list[dict]) -> bytes:
    return b"".join(json.dumps(j).encode() + b"\n" for j in jobs)


def echo(i: int, **kw) -> dict:
    return {"app": "EchoHello", "workdir": f"bulk/{i}", "parameters": {"say_hello_to": str(i)},
            **kw}


def tick_until_taken(s, site):
    for _ in range(200):
        s.tick()
        if not fsio.list_names(site / "jobs" / "created", suffix=".jsonl") and \
                not fsio.list_names(site / "site" / "intake", suffix=""):
            return
    raise AssertionError("bulk drops not taken in")


def test_parents_first_orders_any_chain_in_linear_time_and_reports_cycles():
    chain = [{"id": f"j{i}", "parent_ids": [f"j{i + 1}"] if i < 49_999 else []}
             for i in range(50_000)]                       # every child before its parent
    ordered, stuck = parents_first(chain)
    assert stuck == [] and [r["id"] for r in ordered] == [f"j{i}" for i in range(49_999, -1, -1)]
    cyc = [{"id": "a", "parent_ids": ["b"]}, {"id": "b", "parent_ids": ["a"]},
           {"id": "c", "parent_ids": ["a"]}, {"id": "d", "parent_ids": ["outside"]}]
    ordered, stuck = parents_first(cyc)
    assert [r["id"] for r in ordered] == ["d"] and [r["id"] for r in stuck] == ["a", "b", "c"]


def test_job_create_file_writes_bulk_drops_that_readers_see_and_the_site_takes_in(site,
                                                                                   monkeypatch):
    monkeypatch.setattr(submit, "BULK_MIN", 5)
    monkeypatch.setattr(submit, "CHUNK", 4)                     # files of 4, 8, 16, 2 jobs
    src = site / "jobs.jsonl"
    src.write_bytes(lines([echo(i, tags={"g": str(i % 2)}) for i in range(30)]) + b"\n")
    res = spool(site, "job", "create", "--file", str(src), "-q")
    ids = res.stdout.split()
    assert len(ids) == 30
    drops = fsio.list_names(site / "jobs" / "created", suffix=".jsonl")
    assert len(drops) == 4 and fsio.list_names(site / "jobs" / "created") == []
    lay = layout(site)
    # before the site has seen them, they are CREATED for every reader
    assert spool(site, "job", "ls", "--by-state").stdout.split()[:2] == ["created", "30"]
    from spoolbalsam.api import Job
    assert Job.objects.get(id=ids[7], site_name=str(site)).state == "CREATED"
    assert len(list(select(lay, Filter.from_states(["created"], tags={"g": "1"})))) == 15
    s = site_obj(site)
    s.recover()
    tick_until_taken(s, site)
    assert sorted(ids_in(site, "ready")) == sorted(ids)
    assert count(lay, Filter(tags={"g": "1"})) == {"READY": 15}
    assert index.verify(lay) == []
    assert Job.objects.get(id=ids[7], site_name=str(site)).state == "READY"


def test_job_create_file_reads_stdin_and_names_the_bad_line(site):
    res = spool(site, "job", "create", "-f", "-", input_bytes=lines([echo(1), echo(2)]))
    assert "Added 2 job(s) from stdin" in res.stdout
    bad = lines([echo(3)]) + b'{"app": "EchoHello", "workdir": "x", "nope": 1}\n'
    res = spool(site, "job", "create", "-f", "-", input_bytes=bad, expect=1)
    assert res.stderr.strip() == ("spool: stdin line 2: field 'nope': unknown field; known: "
                                  "app, workdir, parameters, tags, num_nodes, ranks_per_node, "
                                  "threads_per_rank, threads_per_core, gpus_per_rank, "
                                  "node_packing_count, launch_params, wall_time_min, "
                                  "parent_ids, data, retry, transfers")
    res = spool(site, "job", "create", "-f", "-", input_bytes=b"{}\nnot json\n", expect=1)
    assert "stdin line 2: not valid JSON" in res.stderr
    res = spool(site, "job", "create", "-f", "-", "-a", "EchoHello", input_bytes=b"", expect=1)
    assert "drop -a" in res.stderr
    assert len(fsio.list_names(site / "jobs" / "created")) == 2        # only the first call's


def test_a_bulk_drop_with_one_bad_line_is_rejected_whole_byte_for_byte(site):
    good = [echo(i) for i in range(5)]
    data = lines(good[:3]) + b'{"app": "EchoHello", "workdir": "../etc"}\n' + lines(good[3:])
    (site / "jobs" / "created" / "mixed.jsonl").write_bytes(data)
    s = site_obj(site)
    s.recover()
    tick_until_taken(s, site)
    kept, reason = rejected_entries(site)["mixed.jsonl"]
    assert kept == data
    assert reason.strip().startswith("jobs/created/mixed.jsonl line 4: field 'workdir':")
    assert ids_in(site, "ready") == [] and len(index.load(layout(site))) == 0


def test_parents_in_any_order_within_a_file_and_a_cycle_rejects_it(site):
    jobs = [echo(0, id="child", parent_ids=["parent"]), echo(1, id="parent")]
    (site / "jobs" / "created" / "fam.jsonl").write_bytes(lines(jobs))
    cyc = [echo(2, id="x", parent_ids=["y"]), echo(3, id="y", parent_ids=["x"])]
    (site / "jobs" / "created" / "loop.jsonl").write_bytes(lines(cyc))
    s = site_obj(site)
    s.recover()
    tick_until_taken(s, site)
    assert ids_in(site, "ready") == ["parent"] and ids_in(site, "waiting") == ["child"]
    assert "cycle of parents" in rejected_entries(site)["loop.jsonl"][1]


def test_an_id_already_in_a_bulk_drop_rejects_a_later_single_drop(site):
    (site / "jobs" / "created" / "a.jsonl").write_bytes(lines([echo(0, id="same")]))
    drop(site, "same.json", echo(1))
    s = site_obj(site)
    s.recover()
    tick_until_taken(s, site)
    assert ids_in(site, "ready") == ["same"]
    assert "already submitted" in rejected_entries(site)["same.json"][1]
    assert json.loads(fsio.read_bytes(layout(site).job_path("ready", "same")))["workdir"] == "bulk/0"


def test_kill9_of_the_site_while_it_publishes_a_bulk_drop_loses_and_doubles_nothing(site):
    """Lines without ids get ids from their digest and the drop's mtime, so the drop taken
    in again after the crash finds what it already published."""
    n = 12_000
    (site / "jobs" / "created" / "big.jsonl").write_bytes(
        lines([{"app": "EchoHello", "workdir": f"big/{i}",
                "parameters": {"say_hello_to": "x"}} for i in range(n)]))
    pid = start_site(site)
    lay = layout(site)
    ready = lay.state_dir("ready")

    def published():                 # visible records (a batch's temps are dot-files)
        return sum(len(fsio.list_names(ready / b)) for b in fsio.list_dirs(ready))
    wait_for(lambda: 0 < published() < n, 60, "the drop half published", interval=0.005)
    kill9(pid)
    wait_for(lambda: not pid_alive(pid), 10, "site gone")
    half = published()
    assert 0 < half < n
    start_site(site)
    wait_for(lambda: published() == n and not fsio.list_names(lay.site_dir / "intake",
                                                              suffix=""), 120, "all published")
    stop_site(site)
    workdirs = [r["workdir"] for r in select(lay, Filter.from_states(["ready"]), use_index=False)]
    assert sorted(workdirs) == sorted(f"big/{i}" for i in range(n))     # each exactly once
    assert index.verify(lay) == []


def test_bulk_create_beyond_bulk_min_is_durable_bulk_drops(site, monkeypatch):
    from spoolbalsam.api import Job
    monkeypatch.setattr(submit, "BULK_MIN", 10)
    syncs = []
    real = fsio.write_atomic
    monkeypatch.setattr(fsio, "write_atomic",
                        lambda path, data, durable=True: syncs.append(durable) or
                        real(path, data, durable=durable))
    jobs = Job.objects.bulk_create([Job(workdir=f"api/{i}", app_id="EchoHello",
                                        site_name=str(site),
                                        parameters={"say_hello_to": "x"}) for i in range(700)])
    assert len({j.id for j in jobs}) == 700
    assert len(fsio.list_names(site / "jobs" / "created", suffix=".jsonl")) == 2   # 500 + 200
    assert syncs == [True, True]
    assert Job.objects.filter(site_name=str(site), state="CREATED").count() == 700
