"""App definitions: validation with one-line errors, quoting of parameters, direct exec vs
bash, the registry's reload, and parameters that try to inject shell."""
from __future__ import annotations

import os
import shlex
import subprocess
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbalsam.apps import App, AppError, AppRegistry, app_from_dict, argv_for, load_app_file

from helpers import drop, records, start_launcher, wait_for


def app(**d):
    return app_from_dict(d, "apps/T.yml", "T")


def test_undeclared_template_variables_become_required_and_defaults_fill_in():
    a = app(command_template="run {{ x }} --y {{ y }}", parameters={"y": {"default": 7}})
    assert a.required == ["x"]
    assert a.check_parameters({}) == "missing required parameter(s) x of app T"
    assert "unknown parameter(s) z" in a.check_parameters({"x": 1, "z": 2})
    assert a.render({"x": "in.dat"}) == "run in.dat --y 7"


@pytest.mark.parametrize("d, field", [
    ({}, "command_template"),
    ({"command_template": ""}, "command_template"),
    ({"command_template": "echo {{ x"}, "command_template"),
    ({"command_template": "echo", "colour": 1}, "colour"),
    ({"command_template": "echo {{ a }}", "parameters": {"b": {}}}, "parameters"),
    ({"command_template": "echo {{ a }}", "parameters": {"a": {"required": True, "default": 1}}},
     "parameters"),
    ({"command_template": "echo {{ a }}", "parameters": {"a": {"typo": 1}}}, "parameters"),
    ({"command_template": "echo", "retry": {"errors": -1}}, "retry"),
    ({"command_template": "echo", "retry": {"errors": True}}, "retry"),
    ({"command_template": "echo", "environment_variables": ["A=1"]}, "environment_variables"),
    ({"command_template": "echo", "cleanup_files": "*.tmp"}, "cleanup_files"),
    ({"command_template": "echo", "name": "bad name"}, "name"),
])
def test_bad_definitions_are_one_line_naming_file_and_field(d, field):
    with pytest.raises(AppError) as ei:
        app(**d)
    msg = str(ei.value)
    assert msg.startswith("apps/T.yml") and f"'{field}'" in msg and "\n" not in msg, msg


NASTY = ["world", "two words", "'; touch PWNED; echo '", "$(touch PWNED)", "`touch PWNED`",
         "a\"b", "semi;colon", "new\nline", "", "--flag", "*", "~root", "a'b", "$HOME"]


@pytest.mark.parametrize("value", NASTY)
def test_a_parameter_is_always_exactly_one_shell_word(tmp_path, value):
    a = app(command_template="printf '%s\\n' {{ v }} > out.txt")
    cmd = a.render({"v": value})
    subprocess.run(argv_for(cmd), cwd=tmp_path, check=True)
    assert (tmp_path / "out.txt").read_text() == value + "\n"
    assert not (tmp_path / "PWNED").exists()


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=20))
def test_rendered_value_splits_back_to_the_value(value):
    a = app(command_template="prog {{ v }}")
    assert shlex.split(a.render({"v": value})) == ["prog", value]


# Templates built from the pieces where Jinja2's syntax and plain text meet.
_PIECES = ["{{ x }}", "{{y}}", "{{  x  }}", "{{ none }}", "{{ x|upper }}", "{% if x %}", "{% endif %}",
           "{#", "#}", "{", "}", "{}", "%", "#", " ", "\n", "\r", "a", "$", "'", "{{", "}}"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=8).map("".join))
def test_simple_templates_render_exactly_as_jinja2_does(template):
    """A template of text and ``{{ name }}`` only skips Jinja2; the output must not tell."""
    import jinja2
    import jinja2.meta
    from spoolbalsam.apps import _jinja, simple_variables
    try:
        used = jinja2.meta.find_undeclared_variables(_jinja().parse(template))
    except jinja2.TemplateError:
        assert simple_variables(template) is None        # Jinja2 reports its own errors
        return
    names = simple_variables(template)
    assert names is None or set(names) == used
    values = {v: f"it's {v}" for v in used}
    expected = _jinja().from_string(template).render(
        **{k: shlex.quote(v) for k, v in values.items()})
    a = App(name="t", command_template=template, parameters={v: {"required": True} for v in used})
    assert a.render(values) == expected


def test_non_string_parameter_values_are_rendered_plainly():
    a = app(command_template="prog {{ n }} {{ b }} {{ l }}")
    assert shlex.split(a.render({"n": 3, "b": True, "l": [1, "x"]})) == ["prog", "3", "true",
                                                                        '[1,"x"]']


def test_plain_commands_are_execd_directly_and_shell_syntax_goes_to_bash():
    assert argv_for("echo hello world") == ["echo", "hello", "world"]
    assert argv_for("echo $HOME")[:2] == ["/bin/bash", "-c"]
    assert argv_for("a | b")[:2] == ["/bin/bash", "-c"]
    assert argv_for("echo 'x y'")[:2] == ["/bin/bash", "-c"]


def test_load_app_file_reports_yaml_errors_and_name_mismatch(tmp_path):
    p = tmp_path / "Bad.yml"
    p.write_text("command_template: [unclosed\n")
    with pytest.raises(AppError, match=r"Bad.yml: line \d+ not valid YAML"):
        load_app_file(p)
    p.write_text("name: Other\ncommand_template: echo\n")
    with pytest.raises(AppError, match="differs from the file name"):
        load_app_file(p)
    p.write_text("!!python/object/apply:os.system ['touch PWNED']\n")
    with pytest.raises(AppError):
        load_app_file(p)
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_registry_reloads_a_changed_app_and_reports_broken_ones(tmp_path):
    reg = AppRegistry(tmp_path)
    (tmp_path / "A.yml").write_text("command_template: echo one\n")
    assert reg.get("A").command_template == "echo one"
    (tmp_path / "A.yml").write_text("command_template: echo {{ x }}\n")
    st_ = (tmp_path / "A.yml").stat()
    os.utime(tmp_path / "A.yml", ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
    assert reg.get("A").required == ["x"]
    (tmp_path / "B.yml").write_text("command_template: 5\n")
    assert reg.get("B") is None and "B.yml" in reg.errors["B"]
    assert reg.names() == ["A", "B"] and [a.name for a in reg.all()] == ["A"]
    assert reg.get("Nope") is None


def test_injection_through_a_dropped_job_prints_the_value_and_runs_nothing(running_site):
    site = running_site
    evil = "$(touch PWNED); `touch PWNED2`; echo '"
    drop(site, "evil.json", {"app": "EchoHello", "workdir": "inj", "parameters":
                             {"say_hello_to": evil}})
    wait_for(lambda: records(site, "ready"), 20, "the job to be taken in")
    start_launcher(site, idle_ttl=1)
    wait_for(lambda: records(site, "done"), 30, "the job to finish")
    out = (site / "data" / "inj" / "job.out").read_text()
    assert out.startswith(f"Hello, {evil}!")
    assert not (site / "data" / "inj" / "PWNED").exists()
    assert not (site / "data" / "inj" / "PWNED2").exists()
