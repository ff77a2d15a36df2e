"""The folders tell the architecture (ENGINEERING.md, "Shape of the code"): ``events/`` is the wire
contract and imports nothing of Touchline's; ``projections/`` are folds over events and import no
service; a deployable under ``services/`` (api, projector, rules, dispatcher) imports no other
deployable: what two of them share lives at ``services/``'s top level (``ingest``, ``inbox``,
``log_position``, ``first_copies``, ``parking``, ``webhooks``...). The CLI and ``runtime`` start
and drive every service, so they may import any."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = ("api", "projector", "rules", "dispatcher")


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(folder: str) -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): imports(path) for path in sorted((ROOT / folder).rglob("*.py"))}


def test_events_import_nothing_of_touchline():
    wrong = {path: sorted(n for n in names if n.split(".")[0] in ("projections", "services"))
             for path, names in modules("events").items()}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_projections_import_no_service():
    wrong = {path: sorted(n for n in names if n.split(".")[0] == "services")
             for path, names in modules("projections").items()}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_a_deployable_imports_no_other_deployable():
    wrong = {}
    for own in DEPLOYABLES:
        for path, names in modules(f"services/{own}").items():
            others = sorted(n for n in names if n.split(".")[:2] in (["services", d] for d in DEPLOYABLES if d != own))
            if others:
                wrong[path] = others
    assert wrong == {}
