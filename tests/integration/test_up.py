"""`touchline up` as a newcomer runs it: embedded servers, Ctrl-C, restart on the same data dir, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.runtime.embedded import free_port
from services.runtime.processes import listens_on
from tests.support import event, touchline_cli, wait_for, without_followups

pytestmark = pytest.mark.slow
ADMIN = "up-admin"


def start_up(data_dir: Path, port: int, log: Path, **extra_env: str) -> subprocess.Popen:
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": ADMIN}
    for name in ("TOUCHLINE_NATS_URL", "TOUCHLINE_DATABASE_URL", "TOUCHLINE_HTTP", "TOUCHLINE_DATA_DIR",
                 "TOUCHLINE_API_WORKERS"):
        env.pop(name, None)
    env.update(extra_env)
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir), "--http", f"127.0.0.1:{port}"],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )


def wait_healthy(base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("touchline up did not become healthy")


def wait_refused(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/v1/health", timeout=1)
        except httpx.ConnectError:
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the killed stack's API still answers")


def cli(data_dir: Path, *args: str) -> str:
    done = touchline_cli(*args, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout.strip()


def our_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(data_dir) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            pass
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_and_check_nothing_is_left(up: subprocess.Popen, data_dir: Path) -> None:
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0
    time.sleep(0.5)
    left = [p for p in our_processes(data_dir) if _alive(p)]
    assert not left, [p.cmdline() for p in left]


@contextlib.contextmanager
def stopped_at_end(up: subprocess.Popen):
    """However the test ends, its `up` is stopped (SIGINT), not left running into the next test."""
    try:
        yield up
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(60)


def healthy_with_workspace(base: str, data_dir: Path) -> dict[str, str]:
    """Once `up` is healthy: workspace acme, and the headers of an ingest and read token for it."""
    wait_healthy(base)
    cli(data_dir, "workspace", "create", "acme")
    token = cli(data_dir, "token", "create", "--workspace", "acme", "--scope", "ingest", "--scope", "read")
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents-batch+json"}


def test_up_keeps_everything_across_restarts_and_recovers_from_kill(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    up = start_up(data_dir, port, tmp_path / "up.log")
    try:
        auth = healthy_with_workspace(base, data_dir)
        started = (tmp_path / "up.log").read_text()
        assert "postgres.embedded" in started and "postgresql://" in started  # the URL to give psql
        answer = httpx.post(f"{base}/v1/workspaces/acme/events", headers=auth, timeout=30, json=[
            event("marketing.engaged", "dana", channel="instagram", action="comment"),
            event("sales.deal.won", "dana", deal_id="d1", amount="120.50", currency="EUR"),
        ]).json()
        seq = answer["last_seq"]
        # A projector just started may take more than the default 5 s wait on a loaded machine.
        contact = httpx.get(f"{base}/v1/workspaces/acme/contacts/dana", headers=auth, timeout=60,
                            params={"min_seq": seq, "wait_ms": 30000}).json()
        assert contact["revenue"] == {"EUR": "120.50"}

        stop_and_check_nothing_is_left(up, data_dir)

        up = start_up(data_dir, port, tmp_path / "up.log")
        wait_healthy(base)
        again = httpx.get(f"{base}/v1/workspaces/acme/contacts/dana", headers=auth, timeout=60,
                          params={"min_seq": seq, "wait_ms": 30000})
        assert without_followups(again.json()) == without_followups(contact)
        duplicate = httpx.post(f"{base}/v1/workspaces/acme/events", headers=auth, timeout=30, json=[
            event("sales.deal.won", "dana", deal_id="d1", amount="120.50", currency="EUR", id=answer["results"][1]["id"]),
        ]).json()
        assert duplicate["results"][0] == {**answer["results"][1], "status": "duplicate"}

        # kill -9 of `up` itself: its services die with it; what is left is recovered by the next start.
        up.kill()
        up.wait()
        # Its API gets SIGTERM from the kernel and shuts down gracefully; a health check must
        # not be answered by that old process.
        wait_refused(base)
        up = start_up(data_dir, port, tmp_path / "up.log")
        wait_healthy(base)
        assert without_followups(httpx.get(f"{base}/v1/workspaces/acme/contacts/dana", headers=auth).json()) == without_followups(contact)
        # The PostgreSQL the killed `up` left running was taken over, and the log says so (it said nothing).
        found = [json.loads(line)["found_running"] for line in (tmp_path / "up.log").read_text().splitlines()
                 if '"postgres.embedded"' in line]
        assert found == [False, False, True]
        stop_and_check_nothing_is_left(up, data_dir)
    finally:  # the `up` started last (not one a context manager took at the start)
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(60)


def test_make_run_stops_cleanly_however_make_is_ended(tmp_path):
    """A supervisor (or a test harness) holds the `make run` process, not `touchline up`. GNU make
    passes a SIGTERM on to its command; a SIGINT it does not (it expects the terminal to have sent
    it to the whole group) and waits; a SIGKILL, the usual next step, left `touchline up` running
    without it, holding the port and the data dir (an outside audit). `make run` starts it with
    --exit-with-parent."""
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": ADMIN, "TOUCHLINE_DATA_DIR": str(data_dir),
           "TOUCHLINE_HTTP": f"127.0.0.1:{port}"}
    for name in ("TOUCHLINE_NATS_URL", "TOUCHLINE_DATABASE_URL", "TOUCHLINE_API_WORKERS", "MAKEFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    log = tmp_path / "make.log"
    started: list[psutil.Process] = []  # `up`: its command line does not name the data dir (the environment does)
    try:
        for ending in (signal.SIGTERM, signal.SIGKILL):
            make = subprocess.Popen(["make", "--no-print-directory", "-C", str(Path(__file__).parents[2]), "run"],
                                    env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
            wait_healthy(base)
            started += psutil.Process(make.pid).children()
            if ending == signal.SIGKILL:
                make.send_signal(signal.SIGINT)  # to make alone: it waits for `up`, which never hears of it
                time.sleep(1)
                assert make.poll() is None and httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
            make.send_signal(ending)
            make.wait(10)
            wait_refused(base)
            deadline = time.monotonic() + 60
            while left := [p for p in started + our_processes(data_dir) if _alive(p)]:
                assert time.monotonic() < deadline, [p.cmdline() for p in left]
                time.sleep(0.2)
            assert log.read_text().count("touchline.stopped") == (1 if ending == signal.SIGTERM else 2)
        assert log.read_text().count("touchline.parent_exited") == 1
        # Killed before `up` has even started: it was reparented before it could note make's pid
        # (the re-check audit killed make 0.3 s in); make now gives it.
        make = subprocess.Popen(["make", "--no-print-directory", "-C", str(Path(__file__).parents[2]), "run"],
                                env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        # As soon as make has started `up` (a loaded machine may take longer than a moment to get there).
        wait_for(lambda: psutil.Process(make.pid).children(), what="make to start `up`")
        make.kill()
        make.wait(10)
        deadline = time.monotonic() + 60
        while left := [p for p in psutil.process_iter(["cmdline"]) if "--exit-with-parent" in (p.info["cmdline"] or [])
                       and str(make.pid) in (p.info["cmdline"] or []) and _alive(p)] + [p for p in our_processes(data_dir) if _alive(p)]:
            started += left
            assert time.monotonic() < deadline, [p.cmdline() for p in left]
            time.sleep(0.2)
        assert log.read_text().count("touchline.parent_exited") == 2
    finally:
        for process in started + our_processes(data_dir):
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGINT)


def recovers_from(tmp_path, kill) -> str:
    """`up` with workspace acme and one event of dana's; ``kill(up, data_dir)``; then the log takes
    events again (503 meanwhile), nothing acknowledged is lost, health comes back, and `up` stops
    leaving nothing behind. Returns what `up` logged."""
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    up = start_up(data_dir, port, tmp_path / "up.log")
    with stopped_at_end(up):
        auth = healthy_with_workspace(base, data_dir)
        first = httpx.post(f"{base}/v1/workspaces/acme/events", headers=auth, timeout=30,
                           json=[event("marketing.engaged", "dana", channel="instagram", action="comment")])
        assert first.status_code == 200, first.text
        kill(up, data_dir)

        def ingested():
            answer = httpx.post(f"{base}/v1/workspaces/acme/events", headers=auth, timeout=30,
                                json=[event("marketing.engaged", "dana", channel="email", action="click", id="after")])
            assert answer.status_code in (200, 503), answer.text
            return answer.status_code == 200 and answer.json()

        after = wait_for(ingested, 120, what="ingest to work again")["last_seq"]
        contact = httpx.get(f"{base}/v1/workspaces/acme/contacts/dana", headers=auth,
                            params={"min_seq": after, "wait_ms": 30000}).json()
        assert contact["touches"]["marketing"] == 2
        wait_healthy(base)
        stop_and_check_nothing_is_left(up, data_dir)
    return (tmp_path / "up.log").read_text()


def test_up_starts_its_embedded_nats_again_when_it_dies(tmp_path):
    """kill -9 of the embedded nats-server alone: `up` starts it again on its port with its data, the
    services reconnect, and nothing acknowledged is lost (health stayed 503 until a restart)."""

    def kill(up, data_dir) -> None:
        # A projector that keeps dying waits longer each time before it is started again (1, 2, 4,
        # 8, then 10 s). That wait held up the whole supervisor: a NATS that died meanwhile was
        # started again only after it (an outside audit).
        for _ in range(5):
            [projector] = wait_for(lambda: projectors_of(up), what="a projector")
            projector.kill()
            wait_for(lambda: not _alive(projector), what="the projector to die")
        [server] = [p for p in our_processes(data_dir) if p.name() == "nats-server"]
        server.kill()  # not our child: `up` reaps it
        wait_for(lambda: (tmp_path / "up.log").read_text().count('"nats.embedded"') == 2, what="NATS started again")
        wait_for(lambda: projectors_of(up), what="the projector started again")
        lines = [json.loads(line) for line in (tmp_path / "up.log").read_text().splitlines() if line.startswith("{")]
        back = next(n for n, line in enumerate(lines) if line["event"] == "nats.restarting")
        projector_back = [n for n, line in enumerate(lines)
                          if line["event"] == "service.restarted" and line["restarted"] == "projector"]
        # NATS came back while the projector still waited its 10 s.
        assert len(projector_back) == 5 and back < projector_back[-1]

    assert "nats.restarting" in recovers_from(tmp_path, kill)


def test_up_whose_output_cannot_be_written_keeps_serving(tmp_path):
    """`touchline up > up.log` on a disk that filled: the failed write of a log line stopped `up`,
    and with it every service, ingest included (an outside audit). /dev/full fails every write."""
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items()
           if name not in ("TOUCHLINE_NATS_URL", "TOUCHLINE_DATABASE_URL", "TOUCHLINE_HTTP", "TOUCHLINE_DATA_DIR")}
    with open("/dev/full", "w") as full:
        up = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir), "--http",
                               f"127.0.0.1:{port}"], env={**env, "TOUCHLINE_ADMIN_TOKEN": ADMIN}, stdout=full, stderr=full)
    with stopped_at_end(up):
        auth = healthy_with_workspace(base, data_dir)
        answer = httpx.post(f"{base}/v1/workspaces/acme/events", headers=auth, timeout=30,
                            json=[event("marketing.engaged", "dana", channel="instagram", action="comment")])
        assert answer.status_code == 200 and answer.json()["results"][0]["status"] == "accepted", answer.text
        assert up.poll() is None
        stop_and_check_nothing_is_left(up, data_dir)


def test_up_starts_its_embedded_postgresql_again_when_it_dies(tmp_path):
    """kill -9 of the postmaster (or a full disk, on which PostgreSQL shuts itself down): `up` neither
    started it again nor said so, and every ingest answered 503 until `up` was restarted (an
    outside audit)."""

    def kill(_up, data_dir) -> None:
        os.kill(int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)

    assert "postgres.restarting" in recovers_from(tmp_path, kill)


def test_up_starts_nats_again_once_a_full_disk_has_room_for_its_stream(tmp_path):
    """The disk filled under NATS producers: the inbox stream's write failed ("critical write
    error"), and it kept failing after the space was freed, every publish timing out, until
    nats-server was restarted by hand (an outside audit). NATS's data is on a small filesystem."""
    import nats as nats_client

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here")
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    (small / "nats").mkdir()
    data_dir.mkdir()
    (data_dir / "nats").symlink_to(small / "nats")
    up = start_up(data_dir, port, tmp_path / "up.log")
    try:
        with stopped_at_end(up):
            auth = healthy_with_workspace(base, data_dir)
            url = (data_dir / "nats" / "url").read_text().strip()
            filler = small / "filler"
            with open(filler, "wb") as fill:  # all but about 1 MiB
                fill.write(b"\0" * (shutil.disk_usage(small).free - 1024 * 1024))

            async def publish(n: int, pad: str) -> bool:
                nc = await nats_client.connect(url)
                try:
                    body = event("marketing.engaged", f"p{n}", channel="web", action="view", pad=pad, id=f"p{n}")
                    await nc.jetstream().publish("touchline.in.acme", json.dumps(body).encode(), timeout=3)
                    return True
                except Exception:
                    return False
                finally:
                    await nc.close()

            n = 0
            while asyncio.run(publish(n, "y" * 30_000)):  # until the inbox cannot take one
                n += 1
                assert n < 200, "the inbox took every message"
            filler.unlink()
            wait_for(lambda: asyncio.run(publish(1000, "")), 90, what="NATS producers to publish again")
            wait_for(lambda: httpx.get(f"{base}/v1/workspaces/acme/contacts/p1000", headers=auth).status_code == 200,
                     60, what="the event judged and applied")
            assert "nats.restarting_after_write_error" in (tmp_path / "up.log").read_text()
            stop_and_check_nothing_is_left(up, data_dir)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def projectors_of(up: subprocess.Popen) -> list[psutil.Process]:
    return [child for child in psutil.Process(up.pid).children() if _alive(child) and "projector" in child.cmdline()]


def api_workers_of(up: subprocess.Popen) -> list[psutil.Process]:
    return [child for child in psutil.Process(up.pid).children()
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE and "api" in child.cmdline()]


def wait_for_workers(up: subprocess.Popen, count: int, port: int | None = None, timeout: float = 30) -> list[psutil.Process]:
    """``count`` API workers, each listening on ``port`` when given (a connection made before a
    worker's socket exists goes to the others)."""
    deadline = time.monotonic() + timeout

    def ready(workers: list[psutil.Process]) -> bool:
        return len(workers) == count and (port is None or all(listens_on(w.pid, port) for w in workers))

    while not ready(workers := api_workers_of(up)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready(workers), [w.cmdline() for w in workers]
    return workers


def test_up_serves_one_port_from_several_api_workers_and_replaces_a_dead_one(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = start_up(data_dir, port, tmp_path / "up.log", TOUCHLINE_API_WORKERS="3")
    with stopped_at_end(up):
        wait_healthy(base)
        workers = wait_for_workers(up, 3, port)
        # A burst of keep-alive connections is spread over the workers, not taken by the first awake.
        with contextlib.ExitStack() as held:
            burst = [held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10)) for _ in range(24)]
            for connection in burst:
                connection.sendall(b"GET /v1/health HTTP/1.1\r\nHost: touchline\r\n\r\n")
            for connection in burst:
                assert connection.recv(65536).startswith(b"HTTP/1.1")
            serving = {worker.pid: sum(1 for c in worker.net_connections("tcp") if c.laddr.port == port
                                       and c.status == psutil.CONN_ESTABLISHED) for worker in workers}
        assert all(serving.values()), serving
        first = workers[0]
        first.kill()
        # The others accept on the same socket: no new connection is refused meanwhile.
        for _ in range(50):
            assert httpx.get(f"{base}/v1/health", timeout=5).status_code in (200, 503)
        wait_for_workers(up, 3)
        assert first.pid not in [worker.pid for worker in api_workers_of(up)]
        stop_and_check_nothing_is_left(up, data_dir)


def test_up_names_a_port_that_is_taken(tmp_path):
    from services.runtime.serve import listen

    holder = listen("127.0.0.1", free_port())
    try:
        with pytest.raises(SystemExit, match=rf"cannot listen on 127.0.0.1:{holder.getsockname()[1]}"):
            listen("127.0.0.1", holder.getsockname()[1])
    finally:
        holder.close()


def test_a_second_up_on_a_data_dir_in_use_refuses_and_leaves_the_first_alone(tmp_path):
    """It took the running one's NATS for a crash's leftover and stopped it, then ran its own
    servers on the same files; `touchline status` then said NATS was not running."""
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    first = start_up(data_dir, port, tmp_path / "up.log")
    try:
        wait_healthy(base)
        nats_pid = (data_dir / "nats" / "nats.pid").read_text()
        second = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir), "--http", f"127.0.0.1:{free_port()}"],
            env={k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")},
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"touchline: data dir {data_dir.resolve()} is in use by another `touchline up` (pid {first.pid}):"
            " stop that one first, or give this one another --data-dir")
        assert (data_dir / "nats" / "nats.pid").read_text() == nats_pid
        assert httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
        cli(data_dir, "status")
    finally:
        stop_and_check_nothing_is_left(first, data_dir)
    # The claim ends with the process: the data dir is free for the next `up`.
    again = start_up(data_dir, port, tmp_path / "up.log")
    try:
        wait_healthy(base)
    finally:
        stop_and_check_nothing_is_left(again, data_dir)


def test_up_against_external_servers_starts_none_of_its_own_and_names_the_ones_it_uses(tmp_path):
    """`up` with both URLs set runs Touchline's services against them (README, "Running it for
    real"), and logs which servers they are, without their credentials (an outside audit found no
    line naming them)."""
    from services.store.db import without_password
    from tests.support import Servers

    external = Servers(tmp_path / "external")
    data_dir, port = tmp_path / "data", free_port()
    log = tmp_path / "up.log"
    up = start_up(data_dir, port, log, TOUCHLINE_NATS_URL=external.nats_url,
                  TOUCHLINE_DATABASE_URL=external.database_url)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        named = {line["event"]: line.get("url") for line in lines}
        assert "nats.embedded" not in named and "postgres.embedded" not in named
        password = external.nats_url.split("@")[0].rsplit(":", 1)[1]
        assert named["nats.external"] == external.nats.url and password not in log.read_text()
        assert named["postgres.external"] == without_password(external.database_url)
        assert not (data_dir / "nats").exists() and not (data_dir / "postgres").exists()
        stop_and_check_nothing_is_left(up, data_dir)
    finally:
        if up.poll() is None:
            up.kill()
        external.stop()
