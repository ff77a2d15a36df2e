"""What a newcomer sees of the CLI before anything runs: help that says what each option reads,
flags shown as flags, and `serve` refusing missing URLs in one line, the API like the rest."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def touchline(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)


def help_of(*command: str) -> str:
    done = touchline(*command, "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", [("status",), ("audit",), ("replay",), ("token", "create"), ("bench",)])
def test_flags_are_shown_without_a_value(command):
    text = help_of(*command)
    assert "<bool>" not in text
    assert re.search(r"--help\s+Show this message", text)


def test_a_flag_takes_no_value():
    done = touchline("status", "--json", "true")
    assert done.returncode == 2 and "unexpected extra argument" in done.stderr


def test_up_help_says_what_it_starts_and_which_variables_it_reads():
    text = " ".join(help_of("up").split())
    for name in ("TOUCHLINE_DATA_DIR", "TOUCHLINE_HTTP", "TOUCHLINE_NATS_URL", "TOUCHLINE_DATABASE_URL",
                 "TOUCHLINE_ADMIN_TOKEN"):
        assert name in text, name
    for part in ("NATS", "PostgreSQL", "API", "projector", "rules worker", "dispatcher"):
        assert part in text, part


def test_serve_help_names_the_variables_it_reads():
    text = " ".join(help_of("serve").split())
    for name in ("TOUCHLINE_NATS_URL", "TOUCHLINE_DATABASE_URL", "TOUCHLINE_HTTP", "TOUCHLINE_ADMIN_TOKEN"):
        assert name in text, name


def test_admin_commands_and_demo_name_the_data_dir_variable_and_demo_takes_http():
    assert "TOUCHLINE_DATA_DIR" in help_of("workspace", "create")
    demo = help_of("demo")
    assert "--http" in demo and "TOUCHLINE_HTTP" in demo and "TOUCHLINE_DATA_DIR" in demo


@pytest.mark.parametrize("service", ["api", "projector", "rules", "dispatcher"])
def test_serve_without_urls_says_so_in_one_line(service):
    done = touchline("serve", service)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "touchline serve needs TOUCHLINE_NATS_URL and TOUCHLINE_DATABASE_URL;"
        " `touchline up` starts embedded servers and sets both for its services"
    )
    assert "listening" not in done.stdout + done.stderr


def test_replay_name_without_a_point_in_time_is_refused_before_anything_runs():
    """--name names a snapshot; alone it was ignored and the live read models were rebuilt."""
    done = touchline("replay", "--workspace", "acme", "--name", "foo")
    assert done.returncode == 2 and "give --until or --until-seq too" in done.stderr


@pytest.mark.parametrize(("lost", "which"), [
    ("nats.errors.TimeoutError()", "NATS"),
    ("nats.errors.ConnectionClosedError()", "NATS"),
    ("asyncpg.exceptions.ConnectionDoesNotExistError('connection was closed in the middle of operation')", "PostgreSQL"),
])
def test_a_connection_lost_mid_command_is_one_line_not_a_traceback(lost, which):
    # A command whose NATS or PostgreSQL stops answering under it (here: raised by the command).
    code = (
        "import asyncpg, nats.errors, typer\n"
        "from services.cli import main\n"
        "@main.app.command('lose')\n"
        f"def lose():\n    raise {lost}\n"
        "main.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    done = subprocess.run([sys.executable, "-c", code, "lose"], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"touchline: {which} stopped answering during the command"), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
