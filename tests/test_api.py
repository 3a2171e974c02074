"""The Python API: Balsam scripts with only the import line changed, and its guarantees.

The guide's scripts and further Balsam-style scripts (tests/api_scripts/) run as separate
processes against a fresh site, with a real site process and launcher; the finer points run
in-process against a site whose process is ``spoolbalsam.site.loop.Site.tick()``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spoolbalsam import registry
from spoolbalsam import settings as settings_mod
from spoolbalsam.api import (AppDefinitionError, ApplicationDefinition, BatchJob, EventLog,
                             Job, JobBusy, JobFailed, Site, SubmitError)
from spoolbalsam.api import site as api_site
from spoolbalsam.site.loop import Site as SiteProcess
from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.store import Store

SCRIPTS = Path(__file__).parent / "api_scripts"
_LOCK = threading.Lock()            # a global no app file can hold (see the sync test)
SPOOL = [sys.executable, "-m", "spoolbalsam.cli"]


def poll(fn, timeout=30.0, what="condition"):
    """fn() until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def child_env(registry_file: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPOOL_SITE"}
    env["SPOOL_REGISTRY"] = str(registry_file)
    return env


def init_site(root: Path, name: str, env: dict | None = None) -> Layout:
    subprocess.run([*SPOOL, "site", "init", str(root), "-n", name, "--machine", "local",
                    "--gpus", "12", "--cpus", "12"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    return Layout(root)


# ---- the guide's scripts, end to end -----------------------------------------------------------
class GuideSite:
    def __init__(self, base: Path):
        self.base = base
        self.registry = base / "sites.json"
        self.env = child_env(self.registry)
        self.layout = init_site(base / "sites" / "test_aurora", "test_aurora", self.env)
        os.environ["SPOOL_REGISTRY"] = str(self.registry)
        registry.register("test_aurora", self.layout.root)
        self.elsewhere = base / "elsewhere"
        self.elsewhere.mkdir()

    def spool(self, *args, check=True) -> subprocess.CompletedProcess:
        out = subprocess.run([*SPOOL, *args], cwd=self.layout.root, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if check:
            assert out.returncode == 0, out.stderr
        return out

    def script(self, name: str, check=True) -> subprocess.CompletedProcess:
        """Run a script from a directory that is not the site: found by name (registry)."""
        out = subprocess.run([sys.executable, str(SCRIPTS / name)], cwd=self.elsewhere,
                             env=self.env, capture_output=True, text=True, timeout=120)
        if check:
            assert out.returncode == 0, out.stderr
        return out

    def ensure_started(self) -> None:
        if "site process: running" not in self.spool("site", "status").stdout:
            self.spool("site", "start")

    def launcher(self, tag: str) -> None:
        """Run the jobs tagged ``tag`` in a serial-mode launcher until it is idle."""
        out = self.spool("launcher", "-j", "serial", "-t", "2", "--idle-ttl", "2", "--tag", tag)
        assert "idle for 2 s" in out.stderr, out.stderr

    def job_ids(self) -> list[str]:
        return re.findall(r"^([0-9a-z]{26}) ", self.spool("job", "ls").stdout, re.M)

    def by_state(self) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in
                                       self.spool("job", "ls", "--by-state").stdout.splitlines())}


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    old = os.environ.get("SPOOL_REGISTRY")
    g = GuideSite(tmp_path_factory.mktemp("guide"))
    try:
        yield g
    finally:
        g.spool("site", "stop", check=False)
        if old is None:
            os.environ.pop("SPOOL_REGISTRY", None)
        else:
            os.environ["SPOOL_REGISTRY"] = old


def test_guide_scripts_run_unchanged(guide):
    guide.script("balsam_job_ensemble.py")
    assert len(guide.job_ids()) == 25
    apps = guide.spool("app", "ls").stdout
    assert "EchoHello" in apps and "HelloAffinity" in apps and "say_hello_to" in apps
    assert guide.by_state()["created"] == 25

    guide.ensure_started()
    poll(lambda: guide.by_state()["ready"] == 25, what="the site to take the 25 jobs in")

    out = guide.script("submit_mpi_mode.py")
    assert "BatchJobWarning" in out.stderr and "debug-scaling" in out.stderr
    [bj] = BatchJob.objects.filter(site_id=str(guide.layout.root))
    assert (bj.num_nodes, bj.wall_time_min, bj.job_mode, bj.queue, bj.project) == \
        (2, 10, "mpi", "debug-scaling", "Aurora_deployment")
    poll(lambda: BatchJob.objects.get(id=bj.id, site_id=guide.layout.root).state == "submit_failed",
         what="the site to refuse the batch job")
    bj.refresh_from_db()
    assert "debug-scaling" in bj.status_info["error"]
    assert "submit_failed" in guide.spool("queue", "ls", "--history").stdout


def test_balsam_style_queries(guide):
    if not guide.job_ids():
        guide.script("balsam_job_ensemble.py")
    guide.ensure_started()
    poll(lambda: guide.by_state()["ready"] == 25, what="the site to take the 25 jobs in")
    res = json.loads(guide.script("queries.py").stdout)
    assert res["all"] == 25 and res["demo"] == 25 and res["echo"] == 24
    assert res["ready"] == 25 and res["not_ready"] == 0
    assert res["wd"] == ["demo/echo_hello1"] + [f"demo/echo_hello{i}" for i in range(10, 20)]
    assert res["last3"] == ["demo/echo_hello9", "demo/echo_hello8", "demo/echo_hello7"]
    assert res["by_ids"] == 3 and res["excluded"] == 19
    assert res["updated"] == 5 and res["batch_two"] == 5
    assert res["data"] == {"note": "checked"}
    assert res["multiple"].startswith("24 jobs match") and "no job matches" in res["missing"]
    assert res["deleted"] == 1 and res["after_delete"] == 24
    assert res["site"] == ["test_aurora", str(guide.layout.root)]
    assert "batch=two" in guide.spool("job", "ls", "--tag", "batch=two").stdout
    assert len(guide.job_ids()) == 24

    # The guide's last step: run them, and every echo job printed its greeting in job.out.
    guide.launcher("workflow=demo")
    poll(lambda: guide.by_state()["done"] == 23, what="the 23 echo jobs to finish")
    text = (guide.layout.workdir("demo/echo_hello3") / "job.out").read_text()
    assert text.startswith("Hello, world 3!!")
    assert Job.objects.get(workdir__contains="hello_affinity", site_name="test_aurora").state == "FAILED"


def test_python_apps_wait_as_completed_and_results(guide):
    guide.ensure_started()
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "python_apps.py")], cwd=guide.elsewhere,
                            env=guide.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "SUBMITTED"
        guide.launcher("suite=py")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["done"] == 5 and res["not_done"] == 0 and res["as_completed"] == 6
    assert res["squares"] == [{"x": i, "square": i * i} for i in range(4)]
    assert res["states"] == ["JOB_FINISHED"] and res["child_state"] == "JOB_FINISHED"
    assert res["children_of_0"] == [res["child_id"]]
    assert res["boom"] == ["ValueError", "bad input", "FAILED"]
    child_out = guide.layout.workdir("py/child") / "job.out"
    assert child_out.read_text().strip() == "AFTER THE SQUARES"


    # EventLog: the square's transitions, from its record and the launcher's event log.
    sq = res["square_ids"][2]
    steps = [(e.from_state, e.to_state) for e in
             EventLog.objects.filter(job_id=sq, site_id=str(guide.layout.root))]
    assert steps[-3:] == [("READY", "RUNNING"), ("RUNNING", "RUN_DONE"),
                          ("RUN_DONE", "JOB_FINISHED")]
    failed = EventLog.objects.filter(to_state="FAILED", site_id=str(guide.layout.root))
    assert res["boom_id"] in {e.job_id for e in failed}
    with pytest.raises(ValueError, match="bad input") as info:
        Job.objects.get(id=res["boom_id"], site_id=str(guide.layout.root)).result()
    assert isinstance(info.value, JobFailed) and "raise ValueError(msg)" in info.value.traceback


# ---- in-process: a fresh site whose site process is Site.tick() ------------------------------
@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOOL_REGISTRY", str(tmp_path / "sites.json"))
    monkeypatch.delenv("SPOOL_SITE", raising=False)
    monkeypatch.setattr(api_site, "_last_used", None)
    layout = init_site(tmp_path / "site", "mysite")
    (layout.apps / "Echo.yml").write_text("command_template: echo {{ word }}\n")
    monkeypatch.chdir(layout.root)
    settings = settings_mod.load(layout.settings)
    return LocalSite(layout, SiteProcess(layout, settings, settings_mod.machine_from_settings(settings)))


class LocalSite:
    """A site's Layout plus ``tick()``: one step of its site process, run in this process."""

    def __init__(self, layout: Layout, process: SiteProcess):
        self.layout, self.tick = layout, process.tick

    def __getattr__(self, name):
        return getattr(self.layout, name)


def echo(n=0, **kw) -> Job:
    return Job(workdir=f"w/{n}", app_id="Echo", parameters={"word": f"w{n}"}, **kw)


def test_site_is_found_by_cwd_env_registry_or_path(local, tmp_path, monkeypatch):
    monkeypatch.chdir(local.root / "data")
    assert api_site.resolve().root == local.root
    assert api_site.resolve("mysite").root == local.root
    monkeypatch.chdir(tmp_path)
    registry.unregister("mysite")                # in case `spool site init` recorded it
    with pytest.raises(Site.DoesNotExist, match="no site named 'mysite'.*spool site init"):
        api_site.resolve("mysite")
    monkeypatch.setenv("SPOOL_SITE", str(local.root))
    assert api_site.resolve("mysite").root == local.root
    monkeypatch.delenv("SPOOL_SITE")
    registry.register("mysite", local.root)
    assert registry.lookup("mysite") == local.root
    assert Site.objects.get("mysite") == Site(local.root)
    assert Site.objects.get("mysite").id == str(local.root)
    assert [s.name for s in Site.objects.all()] == ["mysite"]
    assert api_site.resolve(str(local.root)).root == local.root
    registry.register("stale", tmp_path / "not-a-site")
    assert registry.lookup("stale") is None
    with pytest.raises(Site.DoesNotExist):
        Site.objects.get("stale")


def test_unsaved_then_saved_job(local):
    job = echo(1, tags={"n": 1})
    assert job.id is None and job.state is None and job.num_nodes == 1
    job.save()
    assert job.id and job.state == "CREATED"
    assert (local.created / f"{job.id}.json").exists()
    local.tick()
    job.refresh_from_db()
    assert job.state == "READY" and job.tags == {"n": "1"}
    assert job.done() is False
    assert Job.objects.get(id=job.id) == job


def test_validation_errors_name_the_field_and_write_nothing(local):
    with pytest.raises(SubmitError, match="field 'workdir'"):
        Job(workdir="../escape", app_id="Echo", parameters={"word": "x"}).save()
    with pytest.raises(SubmitError, match="field 'parameters'.*unknown parameter"):
        Job(workdir="a", app_id="Echo", parameters={"word": "x", "extra": 1}).save()
    with pytest.raises(SubmitError, match="field 'gpus_per_rank'"):
        echo(gpus_per_rank=2, ranks_per_node=12).save()
    with pytest.raises(SubmitError, match="field 'colour'"):
        Job(workdir="a", app_id="Echo", colour="red")
    with pytest.raises(SubmitError, match="field 'parameters'.*not JSON"):
        Job(workdir="a", app_id="Echo", parameters={"word": object()}).save()
    with pytest.raises(SubmitError, match=r"\[job 1\]: field 'num_nodes'"):
        Job.objects.bulk_create([echo(0), echo(1, num_nodes=0), echo(2)])
    assert fsio.list_names(local.created) == []
    with pytest.raises(SubmitError, match="unknown app 'Nope'"):
        Job(workdir="a", app_id="Nope").save()


def test_changes_are_moves_with_a_rewrite(local):
    job = echo(1)
    job.save()
    local.tick()
    job.refresh_from_db()
    job.tags["stage"] = "two"                   # an in-place change is noticed
    job.save()
    assert Job.objects.get(tags={"stage": "two"}).id == job.id
    job.state = "FAILED"
    job.state_data = {"message": "given up by hand"}
    job.save()
    assert job.state == "FAILED" and job._dir == "failed"
    assert Store(local).locate(job.id)[0] == "failed"
    job.state = "RESTART_READY"
    job.save()
    assert job._dir == "ready" and job.attempt == 2
    steps = [(e.from_state, e.to_state) for e in EventLog.objects.filter(job_id=job.id)]
    assert steps[-2:] == [("READY", "FAILED"), ("FAILED", "RESTART_READY")]
    assert job.history[-2]["msg"] == "given up by hand"
    with pytest.raises(ValueError, match="set by spoolbalsam itself"):
        job.state = "RUNNING"
        job.save()
    with pytest.raises(SubmitError, match="field 'num_nodes'"):
        Job.objects.filter(id=job.id).update(num_nodes=-1)
    assert Job.objects.filter(state="RESTART_READY").update(wall_time_min=5) == 1
    assert Job.objects.get(id=job.id).wall_time_min == 5


def test_running_jobs_are_refused_and_nothing_changes(local):
    a, b = echo(1), echo(2)
    Job.objects.bulk_create([a, b])
    local.tick()
    Store(local).claim(local.job_path("ready", a.id), "L1")
    a.refresh_from_db()
    assert a.state == "RUNNING"
    a.data = {"x": 1}
    with pytest.raises(JobBusy, match="is running"):
        a.save()
    with pytest.raises(JobBusy, match="is running"):
        a.delete()
    with pytest.raises(JobBusy, match="cannot update 1 running job"):
        Job.objects.all().update(tags={"t": "u"})
    assert Job.objects.filter(tags={"t": "u"}).count() == 0
    assert Job.objects.filter(state__ne="RUNNING").update(tags={"t": "u"}) == 1


def test_delete_renames_the_record_out(local):
    jobs = Job.objects.bulk_create([echo(i) for i in range(3)])
    jobs[0].delete()                             # still in created/, the site is not running
    assert jobs[0].id is None
    local.tick()
    assert Job.objects.count() == 2
    assert Job.objects.filter(workdir__contains="w/2").delete() == 1
    assert (local.site_dir / "removed" / f"{jobs[2].id}.json").exists()
    with pytest.raises(Job.DoesNotExist):
        jobs[2].refresh_from_db()
    assert [j.id for j in Job.objects.all()] == [jobs[1].id]


def test_created_job_cannot_change_until_the_site_takes_it_in(local):
    job = echo(1)
    job.save()
    job.data = {"k": "v"}
    with pytest.raises(JobBusy, match="still in jobs/created/ and the site is not running"):
        job.save()
    local.tick()
    job.save()
    assert Job.objects.get(id=job.id).data == {"k": "v"}


def test_parents_and_parent_filter(local):
    parent = echo(1)
    parent.save()
    child = echo(2, parent_ids=[parent])
    child.save()
    local.tick()
    assert Job.objects.get(id=child.id).state == "AWAITING_PARENTS"
    assert [j.id for j in Job.objects.filter(parent_id=parent.id)] == [child.id]
    assert [j.id for j in child.parent_query()] == [parent.id]
    assert Job.objects.filter(state="AWAITING_PARENTS").count() == 1


def test_waiting_times_out_without_a_launcher(local):
    job = echo(1)
    job.save()
    local.tick()
    done, not_done = Job.objects.wait([job], timeout=0.2, poll_interval=0.05)
    assert done == [] and not_done == [job]
    with pytest.raises(TimeoutError):
        list(Job.objects.as_completed([job], timeout=0.2, poll_interval=0.05))
    with pytest.raises(TimeoutError):
        job.result(timeout=0.2)
    with pytest.raises(Job.NoResult):
        job.result_nowait()
    with pytest.raises(ValueError, match="never saved"):
        Job.objects.wait([echo(2)], timeout=0)


def test_queries_are_lazy_chainable_and_ordered(local):
    Job.objects.bulk_create([echo(i, tags={"even": str(i % 2 == 0)}, num_nodes=1 + i % 3)
                             for i in range(6)])
    q = Job.objects.filter(tags={"even": "True"})
    (local.apps / "Other.yml").write_text("command_template: echo hi\n")
    Job(workdir="z", app_id="Other", tags={"even": "True"}).save()
    assert q.count() == 4                        # evaluated now, not at filter() time
    assert q.filter(app_id="Echo").count() == 3
    assert [j.num_nodes for j in Job.objects.filter(app_id="Echo").order_by("-num_nodes", "workdir")] == \
        [3, 3, 2, 2, 1, 1]
    assert len(Job.objects.all()[2:5]) == 3 and bool(Job.objects.filter(id="nope")) is False
    assert Job.objects.filter(tags=["even:True"]).filter(tags={"even": "False"}).count() == 0
    assert Job.objects.filter(state=["CREATED", "READY"]).count() == 7
    assert Job.objects.order_by("workdir").first().workdir == "w/0"
    assert Job.objects.filter(parameters={"word": "w3"}).get().workdir == "w/3"
    assert Job.objects.filter(parameters=["word:w3", "word:w4"]).count() == 0
    local.tick()
    stamps = sorted(j.state_timestamp for j in Job.objects.all())      # datetimes (UTC)
    assert Job.objects.filter(last_update_after=stamps[0] - _dt.timedelta(minutes=1)).count() == 7
    assert Job.objects.filter(last_update_before=stamps[0] - _dt.timedelta(minutes=1)).count() == 0
    assert Job.objects.filter(batch_job_id="1").count() == 0
    with pytest.raises(TypeError, match="unknown job filter 'colour'"):
        Job.objects.filter(colour="red")
    with pytest.raises(ValueError, match="unknown state"):
        Job.objects.filter(state="DANCING").count()


def test_bad_app_definitions_fail_at_sync_naming_the_field(local):
    class NoCommand(ApplicationDefinition):
        site = "mysite"

    class Both(ApplicationDefinition):
        site = "mysite"
        command_template = "echo hi"

        def run(self):
            return 1

    class Unused(ApplicationDefinition):
        site = "mysite"
        command_template = "echo {{ a }}"
        parameters = {"a": {"required": True}, "b": {"required": False, "default": "x"}}

    class Typo(ApplicationDefinition):
        site = "mysite"
        comand_template = "echo hi"

    class BadTemplate(ApplicationDefinition):
        site = "mysite"
        command_template = "echo {{ a"

    class UsesLock(ApplicationDefinition):
        site = "mysite"

        def run(self):
            with _LOCK:
                return 1

    cases = [(NoCommand, "NoCommand: field 'command_template': is required"),
             (Both, "Both: field 'run': define either run() or command_template"),
             (Unused, "Unused: field 'parameters': b declared but not used"),
             (Typo, "Typo: field 'comand_template': unknown; did you mean 'command_template'"),
             (BadTemplate, "BadTemplate: field 'command_template': template error"),
             (UsesLock, "UsesLock: uses the global '_LOCK' (a lock)")]
    before = sorted(p.name for p in local.apps.iterdir())
    for cls, message in cases:
        with pytest.raises(AppDefinitionError) as info:
            cls.sync()
        assert message in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in local.apps.iterdir()) == before


def test_app_classes_load_by_name_and_submit(local):
    Echo = ApplicationDefinition.load_by_name("Echo")
    assert Echo.command_template == "echo {{ word }}"
    assert Echo.parameters == {"word": {"required": True}}

    class Greeter(ApplicationDefinition):
        """Greets someone."""
        site = "mysite"
        command_template = "echo {{ greeting }}, {{ who }}"
        parameters = {"greeting": {"required": False, "default": "Hello"}}
        environment_variables = {"LANG": "C"}
        retry = {"errors": 2}

    Greeter.sync()
    yml = (local.apps / "Greeter.yml").read_text()
    assert "description: Greets someone." in yml and "python_class" not in yml
    job = Greeter.submit(workdir="g/1", who="you", tags={"t": "1"}, num_nodes=1)
    assert job.parameters == {"who": "you"} and job.tags == {"t": "1"} and job.id
    loaded = ApplicationDefinition.load_by_name("Greeter", "mysite")
    assert loaded.parameters["greeting"]["default"] == "Hello"
    assert loaded.retry == {"errors": 2, "timeouts": 5}
    assert set(ApplicationDefinition.load_by_site("mysite")) == {"Echo", "Greeter"}
    with pytest.raises(ApplicationDefinition.DoesNotExist, match="no app 'Missing'"):
        ApplicationDefinition.load_by_name("Missing")
    assert Job(workdir="g/2", app_id=Greeter, parameters={"who": "me"}).save().app_id == "Greeter"


def test_batch_jobs(local):
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="serial",
                                 filter_tags={"campaign": "x"})
    assert bj.id == 1 and bj.state == "pending_submission" and bj.queue == "local"
    assert BatchJob.objects.get(id=1).filter_tags == {"campaign": "x"}
    assert BatchJob.objects.filter(state="pending_submission").count() == 1
    assert BatchJob.objects.filter(state=["queued", "running"]).count() == 0
    with pytest.raises(BatchJob.DoesNotExist):
        BatchJob.objects.get(id=7)
    bj.delete()
    assert (local.batch / "1" / "term").exists() and bj.state == "pending_deletion"
    with pytest.raises(SubmitError, match="field 'num_nodes'"):
        BatchJob.objects.create(num_nodes=0, wall_time_min=5, job_mode="mpi")
    with pytest.raises(SubmitError, match="field 'partitions'"):
        BatchJob(num_nodes=1, wall_time_min=5, partitions=[{"num_nodes": 1}])
    BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="mpi")
    with pytest.raises(BatchJob.MultipleObjectsReturned):
        BatchJob.objects.get()


def test_a_crashed_api_process_loses_no_job(local):
    job = echo(1)
    job.save()
    local.tick()
    job.refresh_from_db()
    # A process that died right after its commit-point rename: the job is only in its limbo.
    dead = local.site_dir / "limbo-api" / f"{fsio.HOST}.999999999.1"
    dead.mkdir(parents=True)
    os.rename(job._rec["_path"], dead / f"{job.id}@ready.json")
    assert Job.objects.filter(id=job.id).count() == 1   # still visible while held
    other = echo(2)
    other.save()
    local.tick()
    other.refresh_from_db()
    other.data = {"touch": 1}
    other.save()                                 # first rewrite of this process: recovery
    assert Job.objects.get(id=job.id).state == "READY"
    assert not dead.exists()


NOTEBOOK = '''
import linecache, sys
cell = """
from spoolbalsam.api import ApplicationDefinition
FACTOR = 7
class InNotebook(ApplicationDefinition):
    site = "mysite"
    def run(self, x):
        return x * FACTOR
InNotebook.sync()
"""
name = "/tmp/ipykernel_0/cell-1.py"            # how Jupyter names a cell's code
linecache.cache[name] = (len(cell), None, cell.splitlines(True), name)
main = sys.modules["__main__"]
main.__dict__.pop("__file__", None)            # a kernel's __main__ has no file
exec(compile(cell, name, "exec"), main.__dict__)
'''


def test_a_class_defined_in_a_notebook_cell_syncs(local):
    out = subprocess.run([sys.executable, "-c", NOTEBOOK], cwd=local.root, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "SPOOL_SITE": str(local.root)})
    assert out.returncode == 0, out.stderr
    text = (local.apps / "InNotebook.py").read_text()
    assert "FACTOR = 7" in text and "return x * FACTOR" in text
    assert ApplicationDefinition.load_by_name("InNotebook")(None).run(6) == 42
