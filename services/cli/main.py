"""The `touchline` command (CONTRACT.md section 1)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from events.validation import is_workspace_id
from services.api import auth
from services.cli.attach import DataDir, Workspace, refuse, with_database, with_workspace
from services.cli.output import shown_time, stdout_console
from services.settings import Settings


def _flags_take_no_value() -> None:
    """typer's rich help shows a type for every option, flags too (``--json  <bool>``), as if
    they took a value; its plain help and click's show none. Show none for flags here as well."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # a typer that renders its help otherwise: leave it be
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_take_no_value()

app = typer.Typer(help="Touchline: every marketing and sales touch, as an immutable event log.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces (one per business).", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens and NATS producers: create, list, revoke.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(token_app, name="token")
console = stdout_console()

@app.callback()
def _logging() -> None:
    """Logs go to stderr (structured), so that what a command prints on stdout stays clean."""
    from services import logs

    logs.configure("cli")


@app.command()
def up(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", envvar="TOUCHLINE_DATA_DIR",
        help="Where embedded NATS and PostgreSQL keep their data, made if missing (default ./.touchline)",
    ),
    http: Optional[str] = typer.Option(
        None, "--http", envvar="TOUCHLINE_HTTP", help="HOST:PORT the HTTP API listens on (default 127.0.0.1:8080)"
    ),
    exit_with_parent: Optional[int] = typer.Option(
        None, "--exit-with-parent", metavar="PID",
        help="Stop, cleanly, once process PID, the one that started it, has exited (`make run` gives its"
             " own pid: make does not pass a SIGINT on to its command)",
    ),
) -> None:
    """Start everything: NATS, PostgreSQL, the HTTP API, projector, rules worker and dispatcher.

    NATS (JetStream) and PostgreSQL run embedded under the data dir unless TOUCHLINE_NATS_URL /
    TOUCHLINE_DATABASE_URL name external ones. Ctrl-C stops it all; the next start keeps every event.

    TOUCHLINE_ADMIN_TOKEN, when set, is a bearer token with the admin scope on every workspace;
    TOUCHLINE_API_WORKERS sets how many API processes share the port (default: one per core, at most 4)."""
    from services.runtime.up import up as run_up

    run_up(Settings.from_env(data_dir=data_dir, http=http), exit_with_parent=exit_with_parent)


@app.command()
def serve(service: str = typer.Argument(..., help="api | projector | rules | dispatcher")) -> None:
    """Run one service alone, against an external NATS and PostgreSQL (no embedded servers).

    It reads TOUCHLINE_NATS_URL and TOUCHLINE_DATABASE_URL (both required); the api also
    TOUCHLINE_HTTP (HOST:PORT to listen on, default 127.0.0.1:8080) and TOUCHLINE_ADMIN_TOKEN."""
    from services.runtime import loop
    from services.runtime.serve import SERVICES

    if service not in SERVICES:
        raise typer.BadParameter(f"expected one of {', '.join(SERVICES)}", param_hint="SERVICE")
    try:
        loop.run(SERVICES[service](Settings.from_env()))
    except KeyboardInterrupt:
        pass


@workspace_app.command("create")
def workspace_create(
    workspace: str = typer.Argument(..., metavar="ID", help="The new workspace's id: 1-64 of a-z 0-9 -"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Create a workspace."""
    if not is_workspace_id(workspace):
        raise typer.BadParameter("a workspace id is 1-64 of a-z 0-9 -", param_hint="ID")

    if not with_database(data_dir, lambda pool: auth.create_workspace(pool, workspace)):
        refuse(f"workspace {workspace!r} exists", 1)
    console.print(f"created workspace [bold]{workspace}[/bold]")


@token_app.command("create")
def token_create(
    workspace: str = Workspace,
    scope: list[str] = typer.Option(..., "--scope", "-s", help="ingest, read or admin; repeat for several"),
    nats: bool = typer.Option(False, "--nats", help="NATS producer credentials instead of a bearer token (--scope ingest)"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Create a bearer token for a workspace; it is printed once and only its hash is kept.

    With --nats: a NATS user that may publish only to touchline.in.WORKSPACE; prints its URL,
    user, password and inbox prefix as JSON (the password once; only its bcrypt hash is kept)."""
    if problem := auth.invalid_scopes(scope):
        raise typer.BadParameter(problem, param_hint="--scope")
    if nats:
        from services.cli.producers import create_producer

        if set(scope) != {"ingest"}:
            raise typer.BadParameter("NATS credentials only ingest: use --scope ingest", param_hint="--scope")
        with_workspace(data_dir, workspace)
        raise typer.Exit(create_producer(Settings.from_env(data_dir=data_dir), workspace))

    print(with_workspace(data_dir, workspace, lambda pool: auth.create_token(pool, workspace, scope)))


@token_app.command("list")
def token_list(
    workspace: str = Workspace,
    nats: bool = typer.Option(False, "--nats", help="The embedded NATS's producers instead of bearer tokens"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """A workspace's bearer tokens: id, scopes, when made and when revoked (never a token itself,
    which is not kept). With --nats: its NATS producers (user names)."""
    import msgspec
    from rich.table import Table

    if nats:
        from services.cli.producers import embedded_producers

        with_workspace(data_dir, workspace)
        producers = embedded_producers(Settings.from_env(data_dir=data_dir), workspace)
        if as_json:
            print(msgspec.json.encode({"workspace": workspace, "producers": [
                {"user": p.user, "revoked_at": p.revoked_at} for p in producers]}).decode())
        else:
            table = Table("user", "revoked", title=f"NATS producers of {workspace}", title_justify="left")
            for p in producers:
                table.add_row(p.user, shown_time(p.revoked_time))
            console.print(table)
        return
    tokens = with_workspace(data_dir, workspace, lambda pool: auth.list_tokens(pool, workspace))
    if as_json:
        print(msgspec.json.encode({"tokens": tokens}).decode())  # as GET /v1/workspaces/{ws}/tokens
        return
    table = Table("id", "scopes", "created", "revoked", title=f"tokens of {workspace}", title_justify="left")
    for token in tokens:
        table.add_row(token.id, ", ".join(token.scopes), shown_time(token.created_at), shown_time(token.revoked_at))
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    identity: str = typer.Argument(..., metavar="ID", help="The token's id (`token list`), or the token itself;"
                                  " with --nats, the producer's user name"),
    workspace: str = Workspace,
    nats: bool = typer.Option(False, "--nats", help="Revoke a NATS producer of the embedded NATS"),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Revoke a bearer token: every API process refuses it within 5 seconds. With --nats: take a
    producer out of the embedded NATS, which closes its connections at once."""
    if nats:
        from services.cli.producers import revoke_producer

        with_workspace(data_dir, workspace)
        producer, before = revoke_producer(Settings.from_env(data_dir=data_dir), workspace, identity)
        if before:
            console.print(f"NATS producer [bold]{identity}[/bold] of {workspace} was already revoked,"
                          f" at {shown_time(producer.revoked_time)}")
        else:
            console.print(f"revoked NATS producer [bold]{identity}[/bold] of {workspace}")
        return
    if identity.startswith(auth.TOKEN_PREFIX):  # the token itself, as printed by `token create`
        identity = auth.token_id(identity)
    if not auth.TOKEN_ID.fullmatch(identity):
        raise typer.BadParameter("expected a token's id as `touchline token list` shows it, or the token itself",
                                 param_hint="ID")

    record, before = with_workspace(data_dir, workspace, lambda pool: auth.revoke_token(pool, workspace, identity))
    if record is None:
        refuse(f"no token {identity!r} in workspace {workspace!r}", 1)
    if before:
        console.print(f"token [bold]{record.id}[/bold] of {workspace} was already revoked, at {shown_time(record.revoked_at)}")
    else:
        console.print(f"revoked token [bold]{record.id}[/bold] ({', '.join(record.scopes)}) of {workspace}")


from services.cli import audit as _audit_commands  # noqa: E402  replay, audit, status, snapshot

_audit_commands.register(app)

from services.cli import demo as _demo_command  # noqa: E402  demo

_demo_command.register(app)

from services import bench as _bench_command  # noqa: E402  bench

_bench_command.register(app)

from services.cli import followups as _followup_commands  # noqa: E402  deadletter, rules, asyncapi

_followup_commands.register(app)


from services.cli import parked as _parked_commands  # noqa: E402  parked list|redrive

_parked_commands.register(app)


def _summaries_on_one_line(typer_app: typer.Typer) -> None:
    """The first paragraph of each command's help as its summary in a list of commands: typer's rich
    help keeps that paragraph's line breaks there (and only there), which leaves the list ragged."""
    for command in typer_app.registered_commands:
        if command.short_help is None:
            text = command.help or inspect.getdoc(command.callback) or ""
            command.short_help = " ".join(text.split("\n\n")[0].split())
    for group in typer_app.registered_groups:
        _summaries_on_one_line(group.typer_instance)


_summaries_on_one_line(app)


def main() -> None:
    from services.cli.attach import CONNECTION_LOST, connection_lost

    try:
        app()
    except CONNECTION_LOST as err:
        # NATS or PostgreSQL went away mid-command (a restart, a reload that reset the connection):
        # one line that says which, not a traceback through the client libraries.
        connection_lost(err)


if __name__ == "__main__":
    main()
