"""What a newcomer sees of the CLI before anything runs: help that says what each option reads,
flags shown as flags, and `serve` refusing missing URLs in one line, the API like the rest."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import touchline_cli


def touchline(*args: str) -> subprocess.CompletedProcess:
    return touchline_cli(*args, timeout=60)


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


@pytest.mark.parametrize("command", [("deadletter", "redrive", "--", "-1"), ("parked", "redrive", "--seq", "-1"),
                                     ("deadletter", "redrive", "0"), ("parked", "redrive", "--seq", "0")])
def test_a_sequence_below_1_is_a_usage_error_in_either_redrive(command):
    """`deadletter redrive -- -1` went to NATS and said "re-drove 0 command(s)", exit 1; `parked
    redrive --seq -1` was a usage error, exit 2 (an outside audit)."""
    done = touchline(*command)
    assert done.returncode == 2 and "greater than or equal to 1" in " ".join(done.stderr.split()), done.stderr


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


def test_a_file_a_command_cannot_write_is_named_not_taken_for_a_lost_database(tmp_path):
    done = touchline("asyncapi", "-o", str(tmp_path / "missing" / "x.json"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"touchline: cannot write {tmp_path / 'missing' / 'x.json'}: No such file or directory"
    # Any other command's: an OSError that names a file is about that file.
    code = ("from services.cli import main\n"
            "@main.app.command('read')\n"
            "def read():\n    open('/nonexistent/input.csv')\n"
            "main.main()\n")
    done = subprocess.run([sys.executable, "-c", code, "read"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "touchline: [Errno 2] No such file or directory: '/nonexistent/input.csv'"


@pytest.mark.parametrize("http", ["nonsense", "127.0.0.1:abc", "127.0.0.1:99999"])
def test_up_with_an_http_address_that_is_not_one_says_so_in_one_line(http, tmp_path):
    done = touchline("up", "--data-dir", str(tmp_path), "--http", http)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"touchline: --http (TOUCHLINE_HTTP) must be HOST:PORT with a port from 1 to 65535,"
                                   f" got {http!r}")


def test_replay_until_seq_past_a_64_bit_sequence_is_refused_before_anything_runs():
    """It ran, and ended in a 138-line traceback from PostgreSQL's bigint after the progress bar."""
    done = touchline("replay", "--workspace", "acme", "--until-seq", "99999999999999999999")
    assert done.returncode == 2 and "expected 0 to 9223372036854775807 (a log sequence)" in done.stderr
    assert "Traceback" not in done.stderr


def test_snapshots_of_times_within_one_second_are_named_apart():
    import datetime as dt

    from services.cli.audit import _name_time, _shown_until, parse_until

    def name(text: str) -> str:
        return _name_time(text, parse_until(text))

    assert name("2026-11-23T22:44:44+01:00") == "20261123t214444z"
    assert name("2026-11-23T21:44:44.9Z") == "20261123t214444.9z"
    assert name("2026-11-23T21:44:44.123456Z") == "20261123t214444.123456z"
    assert name("2026-11-01") == "20261101"
    assert _shown_until(parse_until("2026-11-23T21:44:44.9Z")) == "2026-11-23 21:44:44.9 UTC"
    assert _shown_until(dt.datetime(2026, 11, 23, 21, 44, 44, tzinfo=dt.timezone.utc)) == "2026-11-23 21:44:44 UTC"


@pytest.mark.parametrize("until", ["9999-12-31", "0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00Z", "0999-12-31"])
def test_replay_until_outside_the_years_of_event_times_is_refused_before_anything_runs(until):
    """9999-12-31 ended in an OverflowError traceback; year 1 named a snapshot `at-10101t000000z`
    that `snapshot list` then failed to show (year 0)."""
    done = touchline("replay", "--workspace", "acme", "--until", until)
    assert done.returncode == 2 and "expected a time in the years 1000 to 8999 UTC" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_replay_of_a_moment_still_to_come_is_refused_and_a_lower_case_t_and_z_are_read():
    """An outside audit: `--until 2030-01-01` built a snapshot that stopped at today's log and never
    saw what arrived later; RFC 3339's lower-case `t` and `z` were refused."""
    from services.cli.audit import parse_until

    done = touchline("replay", "--workspace", "acme", "--until", "2999-01-01T00:00:00Z")
    assert done.returncode == 2 and "has not happened yet" in done.stderr, done.stderr
    assert parse_until("2026-11-23t21:44:44.5z") == parse_until("2026-11-23T21:44:44.5Z")
    named = touchline("replay", "--workspace", "acme", "--until-seq", "5", "--name", "-lead")
    assert named.returncode == 2 and "starting with a letter or digit" in named.stderr, named.stderr


@pytest.mark.parametrize("until", ["2026-11-24T21Z", "20261124T210315Z", "2026-W47-1", "2026-11-24T21:03Z", "2026328"])
def test_replay_until_in_iso_8601_that_is_no_rfc_3339_is_refused(until):
    """Python's fromisoformat read `2026-11-24T21Z` as 21:00 and `2026-W47-1` as a week's Monday:
    a snapshot of another moment than the one meant, without a word (an outside audit)."""
    import typer

    from services.cli.audit import parse_until

    with pytest.raises(typer.BadParameter, match="expected RFC 3339 like 2026-11-01T12:00:00Z, or a date"):
        parse_until(until)


def test_replay_until_reads_rfc_3339_with_a_space_for_its_t():
    from services.cli.audit import parse_until

    assert parse_until("2026-11-23 21:44:44.5+01:00") == parse_until("2026-11-23T20:44:44.5Z")


def test_output_that_cannot_be_written_is_said_so_not_taken_for_a_lost_database():
    """`touchline asyncapi > /dev/full` said PostgreSQL had stopped answering."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "services.cli.main", "asyncapi"], env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "touchline: cannot write its output: No space left on device", done.stderr
