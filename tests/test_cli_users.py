"""``mqroute user``, ``vhost`` and ``permissions`` edit the data directory's definitions; the
client commands log in with ``--user`` and a password from the environment or a prompt."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from mqroute.cli import main
from mqroute.server import users
from mqroute.server.users import verify_password
from mqroute.testing import running_broker


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(main, list(args), input=input)
    assert result.exit_code != 0
    return result.output


def test_a_new_data_directory_has_guest_and_the_default_vhost(tmp_path: Path) -> None:
    assert run("user", "list", "--data-dir", str(tmp_path)) == "guest\tadministrator\n"
    assert run("vhost", "list", "--data-dir", str(tmp_path)) == "/\n"
    assert run("permissions", "list", "--data-dir", str(tmp_path)) == "guest\t/\t.*\t.*\t.*\n"
    assert stat.S_IMODE((tmp_path / "definitions.json").stat().st_mode) == 0o600


def test_users_from_adding_to_deleting(tmp_path: Path) -> None:
    d = ("--data-dir", str(tmp_path))
    run("user", "add", "alice", "--password-stdin", *d, input="first\n")
    found = users.load(tmp_path).users["alice"]
    assert verify_password("first", found.password_hash)
    assert "first" not in (tmp_path / "definitions.json").read_text()  # a hash, not the password
    run("user", "passwd", "alice", *d, input="second\nsecond\n")  # the prompt asks twice
    assert verify_password("second", users.load(tmp_path).users["alice"].password_hash)
    run("user", "tags", "alice", "monitoring", "management", *d)
    assert "alice\tmanagement,monitoring" in run("user", "list", *d)
    assert "exists already" in fails("user", "add", "alice", "--password-stdin", *d, input="x\n")
    run("user", "delete", "alice", *d)
    assert "no user 'alice'" in fails("user", "delete", "alice", *d)


def test_vhosts_and_permissions(tmp_path: Path) -> None:
    d = ("--data-dir", str(tmp_path))
    run("vhost", "add", "staging", *d)
    run("user", "add", "ci", "--password-stdin", *d, input="pw\n")
    run("permissions", "set", "ci", "staging", "^ci-", "^ci-", ".*", *d)
    assert "ci\tstaging\t^ci-\t^ci-\t.*" in run("permissions", "list", *d)
    assert "no vhost 'prod'" in fails("permissions", "set", "ci", "prod", ".*", ".*", ".*", *d)
    assert "unterminated" in fails("permissions", "set", "ci", "staging", "(", ".*", ".*", *d)
    run("permissions", "clear", "ci", "staging", *d)
    run("vhost", "delete", "staging", *d)
    data = json.loads((tmp_path / "definitions.json").read_text())
    assert data["vhosts"] == ["/"]


def test_the_client_commands_log_in_with_user_and_password() -> None:
    with running_broker(user=("ops", "hunter2")) as url:
        plain = url.split("@", 1)[1]
        output = run(
            "status", "--url", f"mqroute://{plain}", "--user", "ops",
            env={"MQROUTE_PASSWORD": "hunter2"},
        )  # fmt: skip
        assert "version" in output
        result = CliRunner().invoke(
            main, ["status", "--url", f"mqroute://{plain}", "--user", "ops"], input="wrong\n"
        )
        assert result.exit_code != 0
        assert "login refused for user 'ops'" in result.output
        assert "wrong" not in result.output.replace("wrong password", "")


async def test_the_lock_file_and_the_vhosts_directory_are_private(tmp_path: Path) -> None:
    from .test_durability import running

    data = tmp_path / "data"
    run("vhost", "add", "staging", "--data-dir", str(data))
    async with running(data):
        pass
    assert stat.S_IMODE((data / "definitions.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "vhosts").stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "vhosts" / "staging").stat().st_mode) == 0o700
