"""settings.yml: every mistake is one line naming the file and the key; nothing changes.

A broken settings.yml must stop ``spool site start``, ``spool job create`` and
``spool queue submit`` with that line (exit 1), and none of them may write anything.
"""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from spoolbalsam import settings as settings_mod
from spoolbalsam.cli import cli

from helpers import edit_settings, site_info, spool_sub, temps_under

# (what to change, words the message must contain)
BAD = {
    "unknown-top-key": ({"colour": "red"}, ["colour"]),
    "unknown-launcher-key": ({"launcher": {"idle_ttl": 5}}, ["launcher", "idle_ttl"]),
    "wrong-type-number": ({"launcher": {"idle_ttl_sec": "soon"}}, ["launcher.idle_ttl_sec"]),
    "negative-number": ({"lease_stale_sec": -1}, ["lease_stale_sec"]),
    "bad-choice": ({"watch": "sometimes"}, ["watch"]),
    "bad-claim-mode": ({"claim_mode": "optimistic"}, ["claim_mode"]),
    "not-a-mapping": ({"launcher": 5}, ["launcher"]),
    "bool-for-number": ({"poll_interval_sec": True}, ["poll_interval_sec"]),
    "bad-queue-limit": ({"scheduler": {"allowed_queues": {"local": {"max_nodes": 1,
                                                                    "bogus": 2}}}},
                        ["scheduler.allowed_queues.local"]),
    "cpus-zero": ({"launcher": {"cpus_per_node": 0}}, ["cpus_per_node"]),
    # these four were bugs (found by these tests, fixed in 5d91b85)
    "gpu-ids-not-a-list": ({"launcher": {"gpu_ids": 5}}, ["launcher.gpu_ids"]),
    "cpus-not-a-number": ({"launcher": {"cpus_per_node": "x"}}, ["cpus_per_node"]),
    "cpus-boolean": ({"launcher": {"cpus_per_node": True}}, ["cpus_per_node"]),
    "cpus-fraction": ({"launcher": {"cpus_per_node": 2.5}}, ["cpus_per_node"]),
}


def _check_message(msg: str, site, words):
    msg = msg.strip()
    assert "\n" not in msg, msg
    assert str(site / "settings.yml") in msg, msg
    for w in words:
        assert w in msg, msg


CASES = [pytest.param(*v, id=k) for k, v in BAD.items()]


@pytest.mark.parametrize("change, words", CASES)
def test_bad_setting_is_one_line_naming_file_and_key(site, change, words):
    edit_settings(site, change)
    with pytest.raises(settings_mod.SettingsError) as ei:
        settings_mod.load(site / "settings.yml")
    _check_message(str(ei.value), site, words)


@pytest.mark.parametrize("change, words", CASES)
def test_cli_refuses_a_bad_setting_and_writes_nothing(site, change, words):
    edit_settings(site, change)
    before = (site / "settings.yml").read_bytes()
    runner = CliRunner()
    for args in (["job", "create", "-a", "EchoHello", "-w", "x", "-p", "say_hello_to=a"],
                 ["queue", "submit", "-n", "1", "-t", "10", "-j", "serial"]):
        res = runner.invoke(cli, ["--site", str(site), *args])
        assert res.exit_code != 0, (args, res.output)
        msg = res.stderr if res.stderr.strip() else str(res.exception)
        _check_message(msg.replace("spool: ", "", 1), site, words)
    assert (site / "settings.yml").read_bytes() == before
    assert list((site / "jobs" / "created").iterdir()) == []
    assert list((site / "batch").iterdir()) == []


def test_site_start_refuses_bad_yaml_with_one_line_and_starts_nothing(site):
    (site / "settings.yml").write_text("machine: local\nlauncher: {idle_ttl_sec: 5\n")
    before = (site / "settings.yml").read_bytes()
    res = spool_sub(site, "site", "start")
    assert res.returncode == 1
    msg = res.stderr.strip()
    assert msg.startswith("spool: ") and "\n" not in msg, msg
    assert str(site / "settings.yml") in msg and "not valid YAML" in msg and "line" in msg
    assert site_info(site) is None
    assert (site / "settings.yml").read_bytes() == before
    assert temps_under(site / "jobs") == []


def test_site_start_refuses_an_unknown_key_in_a_real_process(site):
    edit_settings(site, {"launcher": {"idle_tll_sec": 5}})
    res = spool_sub(site, "site", "start")
    assert res.returncode == 1
    _check_message(res.stderr.replace("spool: ", "", 1), site, ["launcher", "idle_tll_sec"])
    assert site_info(site) is None


def test_defaults_fill_in_and_the_rendered_template_validates(site):
    s = settings_mod.load(site / "settings.yml")
    assert s["machine"] == "local" and s["launcher"]["gpu_ids"] == [str(i) for i in range(12)]
    assert s["launcher"]["cpus_per_node"] == 4
    m = settings_mod.machine_from_settings(s)
    assert m.cpus_per_node == 4 and len(m.gpu_ids) == 12
    # an empty file is all defaults
    assert settings_mod.validate(yaml.safe_load(""), "x")["watch"] == "auto"


def test_settings_are_loaded_with_a_safe_loader(site, tmp_path):
    (site / "settings.yml").write_text("!!python/object/apply:os.system ['touch PWNED']\n")
    with pytest.raises(settings_mod.SettingsError):
        settings_mod.load(site / "settings.yml")
    assert not (site / "PWNED").exists() and not (tmp_path / "PWNED").exists()
