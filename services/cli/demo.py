"""`touchline demo`: load the sample business into workspace `demo` of a running Touchline and
print its funnel, touches, goals and campaign attribution.

It talks to a running `touchline up` (or `serve api`): the events go in over HTTP (``--http``,
TOUCHLINE_HTTP), like any integration's; the workspace and a token are made directly in that
Touchline's PostgreSQL (under the data dir, or TOUCHLINE_DATABASE_URL: services/cli/attach.py).
Both must be the same Touchline: with no API answering, nothing is made; a token the API does not
know means the data dir is another one's, and it says so. Running it again reuses the workspace;
the events are duplicates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import httpx
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from services import sample
from services.cli.attach import DataDir, Http, database, refuse
from services.settings import Settings
from services.cli.output import progress_bar, stdout_console

console = stdout_console()


async def _workspace_token(settings: Settings, workspace: str) -> tuple[str, bool]:
    """A token for the workspace, and whether the workspace was made for it (it is reused)."""
    from services.api import auth

    async with database(settings) as pool:
        created = await auth.create_workspace(pool, workspace)
        return await auth.create_token(pool, workspace, ["ingest", "read"]), created


async def _take_back(settings: Settings, workspace: str, token: str, created: bool) -> None:
    """What ``_workspace_token`` made: its token once the demo is done, and the workspace too if the
    Touchline serving the API turned out to be another one."""
    from services.api import auth

    async with database(settings) as pool:
        await pool.execute("DELETE FROM tokens WHERE hash = $1", auth.token_hash(token))
        if created:
            await pool.execute("DELETE FROM workspaces WHERE id = $1", workspace)


def _load(http: httpx.Client, workspace: str, events: list[dict]) -> tuple[int, dict[str, int]]:
    last, counts = 0, {"accepted": 0, "duplicate": 0, "rejected": 0}
    with progress_bar() as bar:
        task = bar.add_task(f"sending to workspace {workspace}", total=len(events))
        for start in range(0, len(events), 1000):
            answer = http.post(
                f"/v1/workspaces/{workspace}/events",
                json=events[start : start + 1000],
                headers={"Content-Type": "application/cloudevents-batch+json"},
            )
            answer.raise_for_status()
            body = answer.json()
            for result in body["results"]:
                counts[result["status"]] += 1
            last = max(last, body["last_seq"] or 0)
            bar.advance(task, len(body["results"]))
    return last, counts


def _read(http: httpx.Client, path: str, last: int, **params: Any) -> Any:
    deadline = time.monotonic() + 120
    while True:
        answer = http.get(path, params={"min_seq": last, "wait_ms": 5000, **params})
        if answer.status_code != 503 or time.monotonic() > deadline:
            answer.raise_for_status()
            return answer.json()


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _money(text: str | None) -> str:
    return "—" if text is None else f"{Decimal(text):,.2f}"


BAR = 16  # characters of the funnel's longest bar: the table fits in 80 columns


def funnel_table(answer: dict) -> Table:
    table = Table(title="Funnel (every contact, by first awareness)", title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("contacts", justify="right")
    table.add_column("conversion", justify="right")
    table.add_column("median time from previous", justify="right")
    table.add_column("", overflow="crop", max_width=BAR)  # a bar: cut short on a narrow terminal, never "…"
    top = max((s["contacts"] for s in answer["stages"]), default=0) or 1
    for s in answer["stages"]:
        hours = s["median_hours_from_previous"]
        gap = "—" if hours is None else (f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days")
        table.add_row(s["stage"], str(s["contacts"]), _percent(s["conversion"]), gap,
                      "[cyan]" + "█" * round(BAR * s["contacts"] / top) + "[/cyan]")
    return table


def touches_tables(answer: dict) -> list[Table]:
    before = answer["before_conversion"]
    median = "—" if before["median"] is None else f"{before['median']:g}"
    histogram = Table(
        title="Touches before conversion",
        caption=f"{before['customers']} customers, median {median} touches,"
        f" {_percent(before['share_5_to_12'])} needed 5 to 12",
        title_justify="left",
        caption_justify="left",
    )
    histogram.add_column("touches", justify="right")
    histogram.add_column("customers", justify="right")
    histogram.add_column("")
    for n, customers in sorted(before["histogram"].items(), key=lambda item: int(item[0])):
        colour = "green" if 5 <= int(n) <= 12 else "yellow"
        histogram.add_row(n, str(customers), f"[{colour}]" + "█" * customers + f"[/{colour}]")
    channels = Table(title="Touches by channel", title_justify="left")
    for column in ("channel", "marketing", "sales"):
        channels.add_column(column, justify="left" if column == "channel" else "right")
    for channel, counts in answer["by_channel"].items():
        channels.add_row(channel, str(counts["marketing"]), str(counts["sales"]))
    return [histogram, channels]


def _figures_table(title: str, headers: tuple[str, ...], rows: list[list[str]]) -> Table:
    """A goal's id, then columns of figures never cut (each as wide as its widest), no column
    rules: narrow enough for an 80-column terminal, the ids wrapping instead."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    table.add_column("goal", overflow="fold")
    for number, header in enumerate(headers, start=1):
        cells = [row[number] for row in rows]
        table.add_column(header, justify="right", no_wrap=True, width=max(
            [len(line) for line in header.split("\n")] + [len(Text.from_markup(cell)) for cell in cells]))
    for row in rows:
        table.add_row(*row)
    return table


def _period(goal: dict) -> str:
    start, end = goal["period_start"], goal["period_end"]
    return f"{start} → {end[5:] if end[:4] == start[:4] else end}"  # the year once when it is one


def goals_table(answer: dict) -> list[Table]:
    """Goals, and what the revenue goals still take: narrow enough for an 80-column terminal (the
    unit and the period under the goal's id, the attainment beside the actual, no column rules)."""
    as_of = answer["as_of"][:16].replace("T", " ")
    rows = []
    for g in answer["goals"]:
        show = _money if g["metric"] == "revenue" else (lambda v: "—" if v is None else f"{Decimal(v):,.0f}")
        unit = g["currency"] or g["metric"].replace("_", " ")
        rows.append([f"{g['goal_id']}\n[dim]{unit} · {_period(g)}[/dim]", show(g["target"]),
                     f"{show(g['actual'])} ({_percent(g['attainment'])})", show(g["expected_by_now"]),
                     show(g["projected"]), "[green]on track[/green]" if g["on_track"] else "[red]behind[/red]"])
    table = _figures_table(f"Goals, as of {as_of} UTC", ("target", "actual", "expected\nby now", "projected", "pace"),
                           rows)
    derived_rows = [
        [g["goal_id"], _money(d["avg_deal"]), _percent(d["win_rate"]), _percent(d["lead_to_opportunity"]),
         *("—" if d[k] is None else str(d[k]) for k in ("deals_needed", "opportunities_needed", "leads_needed"))]
        for g in answer["goals"] if (d := g.get("derived"))
    ]
    if not derived_rows:
        return [table]
    headers = ("avg deal", "win rate", "lead→\nopportunity", "deals\nneeded", "opportunities\nneeded", "leads\nneeded")
    return [table, _figures_table("What the revenue goals still take (from the all-time funnel)", headers, derived_rows)]


def attribution_table(answer: dict) -> Table:
    table = Table(title=f"Campaigns ({answer['model']} attribution, {answer['lookback_days']}-day lookback)",
                  title_justify="left")
    for column in ("campaign", "leads", "deals", "revenue"):
        table.add_column(column, justify="left" if column == "campaign" else "right")
    for c in answer["campaigns"]:
        revenue = ", ".join(f"{_money(v)} {cur}" for cur, v in c["revenue"].items()) or "—"
        table.add_row(c["campaign_id"], f"{c['leads']:.1f}", f"{c['deals']:.1f}", revenue)
    return table


def _is_touchline_health(answer: httpx.Response) -> bool:
    try:
        body = answer.json()
        return answer.status_code in (200, 503) and isinstance(body, dict) and "ready" in body
    except ValueError:  # not JSON
        return False


# A demo is a tour: a larger business is `touchline bench`'s (its events are held in memory first).
MAX_CONTACTS = 100_000
MAX_DAYS = 3650


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        data_dir: Optional[Path] = DataDir,
        http_address: Optional[str] = Http,
        contacts: int = typer.Option(300, "--contacts", min=1, max=MAX_CONTACTS,
                                     help="How many contacts the sample business has"),
        days: int = typer.Option(90, "--days", min=1, max=MAX_DAYS, help="Over how many days, up to now"),
        seed: int = typer.Option(7, "--seed", help="Another seed makes another business under the same event ids:"
                                                   " give it a fresh data dir, or the two mix"),
    ) -> None:
        """Load a sample business into workspace `demo` of a running Touchline; print funnel, touches, goals and attribution."""
        settings = Settings.from_env(data_dir=data_dir, http=http_address)
        workspace = sample.WORKSPACE
        base = f"http://{settings.http}"
        try:
            health = httpx.get(f"{base}/v1/health", timeout=10)  # 503 while it starts is fine
        except httpx.HTTPError:
            refuse(f"no Touchline API at {base}: start it with `touchline up` (or `make run`),"
                   " or give its HOST:PORT with --http or TOUCHLINE_HTTP")
        if not _is_touchline_health(health):
            refuse(f"the server at {base} is not a Touchline API (GET /v1/health answered {health.status_code}):"
                   " give Touchline's HOST:PORT with --http or TOUCHLINE_HTTP")
        events = list(sample.events(contacts, days, seed))  # before anything is made: it may take a while
        token, created = asyncio.run(_workspace_token(settings, workspace))
        with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
            # The token first (one cheap read), so that a Touchline that does not know it is named
            # before any progress is shown; whatever stops the demo before the API has taken it
            # (another Touchline, an error, Ctrl-C) takes back what it made.
            try:
                known = http.get(f"/v1/workspaces/{workspace}/contacts", params={"limit": 1}).status_code != 401
            except BaseException:
                asyncio.run(_take_back(settings, workspace, token, created))
                raise
            if not known:
                asyncio.run(_take_back(settings, workspace, token, created))
                made_in = "TOUCHLINE_DATABASE_URL" if settings.database_url else f"data dir {settings.data_dir.resolve()}"
                refuse(f"the Touchline at {base} does not know the token made in the database of {made_in}:"
                       " they are two different Touchlines; point --data-dir or TOUCHLINE_DATA_DIR (or"
                       f" TOUCHLINE_DATABASE_URL) at the one serving {base}, or --http at the one using {made_in}")
            try:
                last, counts = _load(http, workspace, events)
                console.print(
                    f"[bold]{workspace}[/bold]: {counts['accepted']} events accepted, {counts['duplicate']} duplicates"
                    f" (a retrying integration, or an earlier demo), {counts['rejected']} rejected; the latest of them at"
                    f" log seq {last}\n"
                )
                prefix = f"/v1/workspaces/{workspace}"
                console.print(funnel_table(_read(http, f"{prefix}/funnel", last)))
                for table in touches_tables(_read(http, f"{prefix}/touches", last)):
                    console.print(table)
                now = dt.datetime.now(dt.timezone.utc).isoformat()
                for table in goals_table(_read(http, f"{prefix}/goals", last, as_of=now)):
                    console.print(table)
                console.print(attribution_table(_read(http, f"{prefix}/attribution", last, model="position")))
            finally:  # the token was the demo's own and never shown: none is left in `token list`
                asyncio.run(_take_back(settings, workspace, token, created=False))
