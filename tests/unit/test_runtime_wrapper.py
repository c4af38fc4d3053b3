"""`ds01-runc`: only the commands that build a cgroup go through Python; the rest is runc.

The shell front is run for real (sh) with recording programs standing in for runc and
Python; the create path runs on real bundle files, with the agent away (its answers
are proved in tests/agent/test_creation_gate.py against a real engine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.agent.ociwrapper import invocation
from controller.agent.runtimegate import RequestError, read_request
from controller.policy.devicerules import RUNC_APPENDED, emulate, parse_rules
from controller.runtime.runcfront import front_script

ROOT = Path(__file__).resolve().parents[2]
GPU, OTHER = (195, 0), (1, 3)
RECORD = '#!/bin/sh\necho "{name} $*" >> {log}\n'


@pytest.fixture
def front(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls"
    for name in ("runc", "python"):
        program = tmp_path / name
        program.write_text(RECORD.format(name=name, log=log))
        program.chmod(0o755)
    script = tmp_path / "ds01-runc"
    script.write_text(
        front_script(
            python=str(tmp_path / "python"),
            package_root="/pkg",
            runtime_dir="/run/x",
            runc=str(tmp_path / "runc"),
        )
    )
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize(
    ("argv", "goes_to"),
    [
        (
            [
                "--root",
                "/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "c1",
            ],
            "python",
        ),
        (["--root=/r", "--systemd-cgroup", "run", "c1"], "python"),
        (["-root", "/r", "restore", "--bundle", "/b", "c1"], "python"),
        (["--root", "/r", "--log", "/l", "start", "c1"], "runc"),
        (["--root", "/r", "delete", "--force", "c1"], "runc"),
        (["--root", "create", "state", "c1"], "runc"),  # "create" is --root's value here
        (["exec", "--process", "/p", "c1"], "runc"),
        (["--version"], "runc"),
    ],
)
def test_the_front_sends_only_cgroup_building_commands_to_the_wrapper(
    front: tuple[Path, Path], argv: list[str], goes_to: str
) -> None:
    script, log = front
    subprocess.run([str(script), *argv], check=True)
    (line,) = log.read_text().splitlines()
    assert line.split()[0] == goes_to
    if goes_to == "python":
        assert "-I -S -c" in line and "/pkg --runtime-dir=/run/x" in line
        assert line.endswith("-- " + " ".join(argv))  # runc's arguments untouched
    else:
        assert line == "runc " + " ".join(argv)


def test_the_installed_front_is_the_generated_one() -> None:
    committed = (ROOT / "deploy" / "docker-host" / "ds01-runc").read_text()
    assert committed == front_script(), "regenerate deploy/docker-host/ds01-runc"
    daemon = json.loads((ROOT / "deploy" / "docker-host" / "daemon.json").read_text())
    assert daemon["default-runtime"] == "ds01-runc"
    assert daemon["runtimes"]["ds01-runc"]["path"] == "/usr/local/sbin/ds01-runc"


def test_runc_arguments_are_read_as_runc_reads_them() -> None:
    args = ["--root", "/r", "--log=/l.json", "create", "-b", "rel", "--pid-file", "/p", "cid"]
    call = invocation(args, "/run/shim")
    assert (call.command, call.bundle, call.container, call.log) == (
        "create",
        "/run/shim/rel",
        "cid",
        "/l.json",
    )
    assert invocation(["create", "cid"], "/here").bundle == "/here"
    assert invocation(["--debug", "state", "cid"], "/").command == "state"


def bundle(tmp_path: Path, *mapped: tuple[int, int]) -> Path:
    directory = tmp_path / "bundle"
    directory.mkdir()
    devices = [{"allow": False, "access": "rwm"}] + [
        {"allow": True, "type": "c", "major": a, "minor": b, "access": "rwm"} for a, b in mapped
    ]
    config = {
        "process": {"user": {"uid": 1000}},
        "linux": {
            "resources": {"devices": devices},
            "devices": [{"type": "c", "major": a, "minor": b, "path": "/dev/x"} for a, b in mapped],
        },
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def rules_of(directory: Path) -> object:
    return json.loads((directory / "config.json").read_text())["linux"]["resources"]["devices"]


def test_with_no_agent_a_mapped_gpu_is_closed_with_the_last_table(tmp_path: Path) -> None:
    directory = bundle(tmp_path, GPU, OTHER)
    code = fork_main(tmp_path, directory, {"mode": "Enforce", "numbers": [list(GPU)]})
    assert code == 0
    state = emulate([*parse_rules(rules_of(directory)), *RUNC_APPENDED])
    assert not state.allows("c", GPU, "r") and state.allows("c", OTHER, "r")
    assert "fail closed" in (tmp_path / "log.json").read_text()


def test_an_audit_table_or_a_bundle_without_gpus_is_left_untouched(tmp_path: Path) -> None:
    directory = bundle(tmp_path, GPU)
    before = rules_of(directory)
    assert fork_main(tmp_path, directory, {"mode": "Audit", "numbers": [list(GPU)]}) == 0
    assert rules_of(directory) == before
    plain = tmp_path / "plain"
    plain.mkdir()
    other = bundle(plain, OTHER)
    before = rules_of(other)
    assert fork_main(plain, other, {"mode": "Enforce", "numbers": [list(GPU)]}) == 0
    assert rules_of(other) == before


def test_rules_runc_would_refuse_refuse_the_container_with_the_reason_logged(
    tmp_path: Path,
) -> None:
    directory = bundle(tmp_path, GPU)
    config = json.loads((directory / "config.json").read_text())
    config["linux"]["resources"]["devices"].append({"allow": True, "access": ""})
    (directory / "config.json").write_text(json.dumps(config))
    assert fork_main(tmp_path, directory, {"mode": "Enforce", "numbers": [list(GPU)]}) == 1
    (line,) = (tmp_path / "log.json").read_text().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and "devices[2].access" in record["msg"]


def fork_main(tmp_path: Path, directory: Path, table: dict[str, object]) -> int:
    """Run the wrapper as the front does, in its own process (it execs runc: here `true`)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(exist_ok=True)
    (runtime / "gpu-devices.json").write_text(json.dumps(table))
    log = tmp_path / "log.json"
    launch = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from controller.agent.ociwrapper import main; sys.exit(main())"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            launch,
            str(ROOT),
            f"--runtime-dir={runtime}",
            "--runc=true",
            "--timeout=0.5",
            "--",
            "--log",
            str(log),
            "create",
            "--bundle",
            str(directory),
            "cid",
        ],
        check=False,
    )
    return result.returncode


def test_the_agent_reads_the_wrappers_question_strictly_naming_the_bad_field() -> None:
    assert read_request({"container": "c1", "uid": 1000, "mapped": [[195, 0]]}) == (
        "c1",
        1000,
        [(195, 0)],
    )
    assert read_request({"container": "c1"}) == ("c1", None, [])
    for bad, field in (
        ({"uid": 1}, "container"),
        ({"container": "c1", "uid": -1}, "uid"),
        ({"container": "c1", "uid": True}, "uid"),
        ({"container": "c1", "mapped": [[195]]}, "mapped"),
        ({"container": "c1", "mapped": [["195", 0]]}, "mapped"),
    ):
        with pytest.raises(RequestError, match=f"^{field}:"):
            read_request(bad)
