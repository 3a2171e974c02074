"""launch.pyapp: run() and hooks of Python apps in child processes, never in the launcher."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoolbalsam.api import ApplicationDefinition
from spoolbalsam.apps import AppRegistry
from spoolbalsam.launch import pyapp
from spoolbalsam.spool import fsio
from spoolbalsam.spool.layout import Layout
from spoolbalsam.spool.record import normalize

GREETING = "hello"


def shout(text):
    return text.upper() + "!"


class Adder(ApplicationDefinition):
    """Adds two numbers."""
    def run(self, a, b=10):
        print("adding", a, b, "for", self.job.id)
        return {"sum": a + b, "greeting": shout(GREETING), "workdir": os.getcwd()}


class Raiser(ApplicationDefinition):
    def run(self, why):
        raise KeyError(why)


class Opaque(ApplicationDefinition):
    def run(self):
        return object()


class Exits(ApplicationDefinition):
    def run(self, code):
        sys.exit(code)


class Meddler(ApplicationDefinition):
    def run(self):
        self.job.state = "JOB_FINISHED"


class Preambled(ApplicationDefinition):
    def shell_preamble(self):
        return ["export SPOOL_TEST_A=1", "export SPOOL_TEST_B=two"]

    def run(self):
        return os.environ.get("SPOOL_TEST_A", "") + os.environ.get("SPOOL_TEST_B", "")


class Hooked(ApplicationDefinition):
    command_template = "echo {{ word }}"

    def postprocess(self):
        self.job.data["seen"] = self.job.workdir
        self.job.state = "JOB_FINISHED"
        self.job.state_data = "checked the output"

    def handle_error(self):
        raise RuntimeError("cannot handle " + self.job.parameters["word"])

    def handle_timeout(self):
        time.sleep(30)


APPS = (Adder, Raiser, Opaque, Exits, Meddler, Preambled, Hooked)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyapp") / "site"
    env = {**os.environ, "SPOOL_REGISTRY": str(root.parent / "sites.json")}
    subprocess.run([sys.executable, "-m", "spoolbalsam.cli", "site", "init", str(root),
                    "--machine", "local"], check=True, stdout=subprocess.DEVNULL, env=env)
    for cls in APPS:
        cls.site = str(root)
        cls.sync()
    return Layout(root)


def app(site, name):
    found = AppRegistry(site.apps).get(name)
    assert found is not None, AppRegistry(site.apps).errors
    return found


def record(site, name, workdir, params=None, job_id=None) -> dict:
    """A claimed record on disk (as a launcher holds it in running/L/)."""
    rec = normalize({"app": name, "workdir": workdir, "parameters": params or {}}, "test",
                    default_id=job_id)
    path = site.job_path("running", rec["id"], "Ltest")
    fsio.write_json_atomic(path, rec)
    rec["_path"] = str(path)
    return rec


def run_job(site, name, workdir, params=None):
    rec = record(site, name, workdir, params)
    wd = site.workdir(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    argv = pyapp.run_argv(site.root, app(site, name), rec)
    proc = subprocess.run(argv, cwd=wd, capture_output=True, text=True, timeout=60)
    return rec, proc, pyapp.read_result(wd, rec)


def test_run_argv_is_the_runner_module(site):
    rec = record(site, "Adder", "argv/1", {"a": 1})
    argv = pyapp.run_argv(site.root, app(site, "Adder"), rec)
    assert argv[1:5] == ["-m", "spoolbalsam.api.child", "run", str(site.root)]
    assert argv[5:] == ["Adder", rec["_path"]]
    del rec["_path"]
    assert pyapp.run_argv(site.root, app(site, "Adder"), rec)[-1] == rec["id"]


def test_run_returns_value_in_workdir_with_captured_globals(site):
    rec, proc, res = run_job(site, "Adder", "add/1", {"a": 5})
    assert proc.returncode == 0, proc.stderr
    assert res["return_value"] == {"sum": 15, "greeting": "HELLO!",
                                   "workdir": str(site.workdir("add/1"))}
    assert res["job"] == rec["id"] and res["attempt"] == 1
    assert f"adding 5 10 for {rec['id']}" in proc.stdout
    assert pyapp.result_fields(site.workdir("add/1"), rec) == {"result": res}


def test_run_exception_is_recorded_and_exit_code_nonzero(site):
    rec, proc, res = run_job(site, "Raiser", "raise/1", {"why": "missing-key"})
    assert proc.returncode == 1
    assert res["exception"] == "KeyError: 'missing-key'"
    assert "raise KeyError(why)" in res["traceback"]
    assert "KeyError" in proc.stderr
    fields = pyapp.result_fields(site.workdir("raise/1"), rec)
    assert fields["exception"]["exception"] == "KeyError: 'missing-key'"


def test_non_json_return_falls_back_to_repr(site):
    _, proc, res = run_job(site, "Opaque", "opaque/1")
    assert proc.returncode == 0, proc.stderr
    assert res["repr"] is True and res["return_value"].startswith("<object object at")


def test_sys_exit_code_is_the_job_exit_code(site):
    _, proc, res = run_job(site, "Exits", "exit/3", {"code": 3})
    assert proc.returncode == 3
    assert res["exception"] == "SystemExit: 3"
    _, proc, res = run_job(site, "Exits", "exit/0", {"code": 0})
    assert proc.returncode == 0 and res["return_value"] is None


def test_job_is_read_only_in_run(site):
    _, proc, res = run_job(site, "Meddler", "meddle/1")
    assert proc.returncode == 1
    assert res["exception"].startswith("AttributeError: job.state cannot be set in run()")


def test_stale_result_of_another_attempt_is_ignored(site):
    rec, proc, res = run_job(site, "Adder", "add/2", {"a": 1})
    assert res is not None
    assert pyapp.read_result(site.workdir("add/2"), {**rec, "attempt": 2}) is None
    assert pyapp.read_result(site.workdir("add/2"), {**rec, "id": "other"}) is None


def test_shell_preamble_is_evaluated_at_sync_and_sourced_before_run(site):
    a = app(site, "Preambled")
    assert a.shell_preamble == "export SPOOL_TEST_A=1 && export SPOOL_TEST_B=two"
    assert pyapp.preamble_for(a) == a.shell_preamble
    rec = record(site, "Preambled", "pre/1")
    argv = pyapp.run_argv(site.root, a, rec)
    assert argv[:2] == ["/bin/bash", "-c"]
    site.workdir("pre/1").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(argv, cwd=site.workdir("pre/1"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert pyapp.read_result(site.workdir("pre/1"), rec)["return_value"] == "1two"


def test_methods_are_read_without_running_user_code(site):
    assert pyapp.methods_of(site.root, app(site, "Adder")) == ("run",)
    hooked = app(site, "Hooked")
    assert pyapp.methods_of(site.root, hooked) == ("postprocess", "handle_error", "handle_timeout")
    assert pyapp.has_hook(site.root, hooked, "postprocess")
    assert not pyapp.has_hook(site.root, hooked, "preprocess")
    assert not pyapp.is_run_app(site.root, hooked) and pyapp.is_run_app(site.root, app(site, "Adder"))


def test_hook_sets_state_data_and_message(site):
    rec = record(site, "Hooked", "hook/1", {"word": "hi"})
    rec["data"] = {"before": 1}
    res = pyapp.run_hook(site.root, app(site, "Hooked"), rec, "postprocess", timeout=60)
    assert res == {"state": "JOB_FINISHED", "data": {"before": 1, "seen": "hook/1"},
                   "state_data": "checked the output", "error": None}
    assert [p.name for p in site.workdir("hook/1").iterdir() if p.name.startswith(".")] == []


def test_hook_exception_is_returned_never_raised(site):
    rec = record(site, "Hooked", "hook/2", {"word": "this"})
    res = pyapp.run_hook(site.root, app(site, "Hooked"), rec, "handle_error", timeout=60)
    assert res["state"] is None and res["data"] is None
    assert res["error"] == "hook handle_error raised RuntimeError: cannot handle this"
    assert "RuntimeError" in (site.workdir("hook/2") / pyapp.HOOK_LOG).read_text()


def test_hook_timeout_kills_the_child(site):
    rec = record(site, "Hooked", "hook/3", {"word": "x"})
    run = pyapp.start_hook(site.root, app(site, "Hooked"), rec, "handle_timeout")
    assert run.poll() is None                      # running, and poll() did not block
    t = time.monotonic()
    res = run.wait(1.0)
    assert time.monotonic() - t < 10
    assert res["error"] == "hook handle_timeout timed out after 1 s"
    assert run.proc.poll() is not None


def test_unknown_hook_and_unstartable_hook_are_errors(site):
    rec = record(site, "Hooked", "hook/4", {"word": "x"})
    assert "unknown hook" in pyapp.run_hook(site.root, app(site, "Hooked"), rec, "explode")["error"]
    broken = app(site, "Hooked")
    broken.python_exe = "/nonexistent/python"
    res = pyapp.run_hook(site.root, broken, rec, "postprocess")
    assert res["state"] is None and "could not start" in res["error"]
