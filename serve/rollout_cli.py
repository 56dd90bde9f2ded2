"""`serve rollout status|set|promote|abort MODEL --server URL`: a running server's rollout, over its HTTP API.

Every subcommand prints the status document after the call (a table, or the JSON with ``--format json``).
A refused call exits 2 with the server's one-line reason; ``--token`` (or SERVE_TOKEN) authenticates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import cast

from serve.rollout.documents import ArmDocument, EvaluationDocument, StatusDocument

TOKEN_ENV = "SERVE_TOKEN"
_TIMEOUT_S = 30.0


class CallRefused(Exception):
    """The server refused the call (or could not be reached); the message says why, in one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rollout_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("model", metavar="MODEL")
        p.add_argument(
            "--server", required=True, metavar="URL", help="the server's HTTP address, e.g. http://host:8000"
        )
        p.add_argument("--token", default=None, help=f"a bearer token of scope admin (default: ${TOKEN_ENV})")
        p.add_argument("--format", choices=("table", "json"), default="table", help="how to print the status")
        return p

    command("status", "show the model's rollout: state, weights, and per gate the value, threshold and samples")
    set_ = command("set", "set a new rollout for the model")
    set_.add_argument("--primary", type=int, required=True, metavar="V")
    set_.add_argument("--candidate", action="append", default=[], metavar="V=PERCENT", help="repeat for A/B/n")
    set_.add_argument("--shadow", default=None, metavar="V=PERCENT")
    set_.add_argument("--key", default=None, metavar="NAME", help="the request parameter or header that picks the arm")
    set_.add_argument("--steps", default=None, metavar="LIST", help="e.g. shadow,1,10,50,100 (one candidate only)")
    set_.add_argument(
        "--gate", action="append", default=[], metavar="NAME=VALUE", help="e.g. max_p99_ratio=2, or NAME=null"
    )
    promote = command("promote", "make the candidate (or --version) the primary")
    promote.add_argument("--version", type=int, default=None, metavar="V")
    command("abort", "end the rollout: only the primary answers")


# ---- building the spec from flags ----------------------------------------------------------------------
def _number(text: str, what: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CallRefused(f"{what}: {text!r} is not a number") from None


def _arm(text: str, flag: str) -> dict[str, float]:
    """``V=PERCENT``, or ``V`` alone (with --steps the step gives the weight; the server says when one is missing)."""
    version, sep, percent = text.partition("=")
    if not version.strip().isdigit():
        raise CallRefused(f"{flag} takes VERSION=PERCENT (e.g. 2=10), not {text!r}")
    arm = {"version": int(version)}
    return {**arm, "percent": float(_number(percent, flag))} if sep else dict(arm)


def _steps(text: str) -> list[str | float]:
    return [s if s == "shadow" else float(_number(s, "--steps")) for s in (p.strip() for p in text.split(",")) if s]


def _gates(pairs: Sequence[str]) -> dict[str, float | int | None]:
    gates: dict[str, float | int | None] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CallRefused(f"--gate takes NAME=VALUE (e.g. max_p99_ratio=2), not {pair!r}")
        gates[name] = None if value.lower() in ("null", "none", "off") else _number(value, f"--gate {name}")
    return gates


def spec_of(args: argparse.Namespace) -> dict[str, object]:
    """The spec document the flags of `serve rollout set` describe (the server checks it)."""
    spec: dict[str, object] = {"primary": args.primary}
    if args.candidate:
        spec["candidates"] = [_arm(c, "--candidate") for c in args.candidate]
    if args.shadow is not None:
        spec["shadow"] = _arm(args.shadow, "--shadow")
    if args.key is not None:
        spec["key"] = args.key
    if args.steps is not None:
        spec["steps"] = _steps(args.steps)
        # With steps a candidate's weight comes from the step: `--candidate 2` alone is enough.
    if args.gate:
        spec["gates"] = _gates(args.gate)
    return spec


# ---- the call ------------------------------------------------------------------------------------------
def call(server: str, method: str, path: str, token: str | None, body: object = None) -> StatusDocument:
    url = server.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return cast(StatusDocument, json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        raise CallRefused(f"{exc.code} {_error_of(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CallRefused(f"cannot reach {server}: {reason}") from None


def _error_of(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else body.decode("utf-8", "replace").strip() or "no reason given"


# ---- printing ------------------------------------------------------------------------------------------
def _arms(arms: Sequence[ArmDocument]) -> str:
    return ", ".join(f"{a['version']} ({a['percent']:g}%)" for a in arms) or "none"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _evaluation_lines(evaluation: EvaluationDocument) -> list[str]:
    lines = [f"evaluation at {evaluation['at']} of version {evaluation['version']}: {evaluation['verdict']}"]
    header = ("gate", "value", "threshold", "primary n", "candidate n", "verdict")
    rows = [header] + [
        (
            g["name"],
            _value(g["value"]),
            _value(g["threshold"]),
            str(g["samples"]["primary"]),
            str(g["samples"]["candidate"]),
            g["verdict"],
        )
        for g in evaluation["gates"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines


def format_table(status: StatusDocument) -> str:
    plan, routing = status["plan"], status["routing"]
    if plan is None or routing is None:
        return f"model {status['model']}: no rollout (the default version answers)"
    s = plan["status"]
    steps = plan["steps"]
    step = f", step {s['step'] + 1} of {len(steps)} ({steps[s['step']]})" if steps else ""
    lines = [
        f"model {status['model']}: rollout revision {s['revision']}, {s['phase']}{step}",
        f"  last change: {s['reason'] or '-'} (by {s['actor'] or '-'} at {s['updated_at'] or '-'})",
        f"  primary:    {routing['primary']}",
        f"  candidates: {_arms(routing['candidates'])}",
        f"  shadow:     {_arms([routing['shadow']] if routing['shadow'] else [])}",
        f"  key:        {routing['key'] or 'none (random split)'}",
    ]
    evaluation = status["evaluation"]
    lines += _evaluation_lines(evaluation) if evaluation is not None else ["evaluation: none yet"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    path = f"/v2/models/{urllib.parse.quote(args.model, safe='')}/rollout"
    try:
        match args.rollout_command:
            case "status":
                status = call(args.server, "GET", path, token)
            case "set":
                status = call(args.server, "PUT", path, token, spec_of(args))
            case "promote":
                body = {"version": args.version} if args.version is not None else {}
                status = call(args.server, "POST", path + "/promote", token, body)
            case "abort":
                status = call(args.server, "POST", path + "/abort", token, {})
            case other:
                raise AssertionError(other)
    except CallRefused as exc:
        print(f"serve rollout {args.rollout_command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.format == "json" else format_table(status))
    return 0
