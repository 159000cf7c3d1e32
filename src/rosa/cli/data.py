"""``rosa data verify``: check a data directory against the published SHA-256 of every known file."""

from __future__ import annotations

import argparse


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(name, help="check LLM-Adapters data files against their published checksums")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser("verify", help="hash every known file of a data directory and compare")
    verify.add_argument("--data-dir", help="the data directory (else $ROSA_DATA_DIR, else ../shared/data/llm-adapters)")


def run(args: argparse.Namespace) -> int:
    """Exit 1 when a file differs from its published checksum; missing files are listed, not failures
    (several upstream files are commonly absent), but a directory with no known file at all fails."""
    from rosa.data import resolve_data_dir, verify_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    checks = verify_data_dir(data_dir)
    width = max(len(c.path) for c in checks)
    for check in checks:
        detail = {"ok": "", "missing": "  (not present)", "mismatch": f"  (sha256 {check.actual_sha256}, expected {check.expected_sha256})"}
        print(f"{check.status:<9} {check.path:<{width}}{detail[check.status]}".rstrip())
    counts = {status: sum(c.status == status for c in checks) for status in ("ok", "mismatch", "missing")}
    print(f"{data_dir}: {counts['ok']} ok, {counts['mismatch']} mismatched, {counts['missing']} missing")
    return 1 if counts["mismatch"] or not counts["ok"] else 0
