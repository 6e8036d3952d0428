"""Figures of the last reliability run, from var/reliability/<database>/*.json, as the
Markdown that RELIABILITY.md shows between its `figures` markers.

    python -m tests.reliability.report                  # print
    python -m tests.reliability.report --write RELIABILITY.md
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "reliability"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _load(database: str) -> dict[str, dict]:
    folder = OUT / database
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _crash(found: dict[str, dict]) -> list[str]:
    trials = sorted(
        (d for name, d in found.items() if name.startswith("crash-trial-")),
        key=lambda d: d["trial"],
    )
    if not trials:
        return []
    lines = [
        "| trial | recipients | killed after (accepted) | in flight at kill | sent | soft bounced "
        "| bounced | failed | in doubt | duplicates | lost | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in trials:
        lines.append(
            f"| {d['trial']} | {d['recipients']} | {d['killed_after_accepted']} "
            f"| {d['in_flight_at_kill']} | {d['sent']} | {d['soft_bounced']} | {d['bounced']} "
            f"| {d['failed']} | {d['in_doubt']} | {d['duplicates']} | {d['lost']} "
            f"| {d['seconds']} |"
        )
    lines.append(
        f"| **{len(trials)} trials** | {sum(d['recipients'] for d in trials)} | | "
        f"max {max(d['in_flight_at_kill'] for d in trials)} | "
        f"{sum(d['sent'] for d in trials)} | | | | {sum(d['in_doubt'] for d in trials)} | "
        f"**{sum(d['duplicates'] for d in trials)}** | **{sum(d['lost'] for d in trials)}** | |"
    )
    return lines


def _faults(found: dict[str, dict]) -> list[str]:
    rows = [d for name, d in found.items() if name.startswith("smtp-fault-")]
    ours = [d for name, d in found.items() if name.startswith("smtp-ours-")]
    lines = []
    if rows:
        lines += [
            "| recipient fault | messages hit | status | rejection | SMTP code | healthy ones sent "
            "| worker survived | account still on |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in rows:
            lines.append(
                f"| {d['fault']} | {d['targets']} | "
                f"{', '.join(f'{k} {v}' for k, v in d['target_statuses'].items())} | "
                f"{', '.join(d['rejections'])} | "
                f"{', '.join(str(c) for c in d['target_smtp_codes'])} | "
                f"{d['healthy_sent']}/{d['healthy']} | {_yes(d['worker_survived'])} | "
                f"{_yes(d['account_active'])} ({d['account_failures']} failures) |"
            )
    if ours:
        lines += [
            "",
            "| fault of our own side | dispatch passes | worker survived | mail held back "
            "| account switched off after | error shown on the run | sent once after the fix |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in ours:
            held = ", ".join(f"{k} {v}" for k, v in d["statuses_while_down"].items())
            lines.append(
                f"| {d['fault']} | {d['passes']} | {_yes(d['worker_survived'])} | {held} | "
                f"{d['account_failures'] if not d['account_active'] else 'never'} failures | "
                f"{d['account_error'][:70]} | {d['recovered_sent']} "
                f"({'once each' if d['recovered_delivered_once'] else 'NOT once each'}) |"
            )
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _events(d: dict | None) -> list[str]:
    if not d:
        return []
    passes = d["passes"]
    return [
        f"- {d['events']} events over {d['messages']} messages "
        f"({', '.join(f'{k} {v}' for k, v in d['types'].items())}); "
        f"final statuses {', '.join(f'{k} {v}' for k, v in d['final_statuses'].items())}; "
        f"{d['active_suppressions']} active suppressions.",
        f"- Passes equal to applying them once: **{d['passes_equal_to_once']} of {len(passes)}**; "
        f"events recorded per pass: {', '.join(str(p['recorded']) for p in passes)} "
        f"(replays record nothing); replays that changed anything at all: "
        f"{len(passes) - 1 - d['replays_changing_nothing']}.",
        f"- Rows that follow the order of arrival (first-seen time values): "
        f"{passes[0]['arrival_order_rows'] or 'none'}.",
    ]


def _load_figures(d: dict | None) -> list[str]:
    if not d:
        return []
    return [
        f"- {d['clients']} clients for {d['seconds']} s: **{d['requests']} requests** "
        f"({d['requests_per_second']}/s; {d['opens_requested']} opens, {d['clicks_requested']} "
        f"clicks), **{d['errors']} errors**, latency p50 {d['latency_p50_ms']} ms, "
        f"p99 {d['latency_p99_ms']} ms.",
        f"- Recorded after draining the buffer: **{d['recorded_events']} events**; message "
        f"counts that differ from the requests made: {d['mismatched_event_counts']} (events), "
        f"{d['mismatched_message_counters']} (counters). Drained during the load "
        f"{d['drained_during_load']}, after it {d['drained_after_load']} "
        f"in {d['drain_after_seconds']} s; drain runs that failed (and left their events for "
        f"the next): {d.get('drain_runs_failed', 0)} {d.get('drain_failures') or ''}.",
        f"- Meanwhile the worker sent {d['run_sent_during_load']} of {d['run_recipients']} "
        f"(busy all along: {_yes(d.get('worker_sending_all_along', False))}), "
        f"{d['run_sent_twice']} twice.",
    ]


def _drop(d: dict | None) -> list[str]:
    if not d:
        return []
    return [
        f"- {d['recipients']} recipients, batches of {d['batch_size']}, "
        f"{len(d['drops'])} drops ({d['backends_terminated']} backends terminated, at "
        f"{', '.join(str(x['at_accepted']) for x in d['drops'])} accepted messages); "
        f"cluster survived: {_yes(d['cluster_survived'])}; run {d['run_status']}.",
        f"- Sent {d['sent']}, in doubt {d['in_doubt']}, **duplicates {d['duplicates']}**, "
        f"**lost {d['lost']}**, accepted but not recorded {d['accepted_not_recorded']}.",
    ]


def render() -> str:
    parts = []
    for database in ("postgresql", "sqlite"):
        found = _load(database)
        if not found:
            continue
        when = max(d["recorded_at"] for d in found.values())
        parts += [f"### {database} (last recorded {when})", ""]
        for title, lines in (
            ("Crash", _crash(found)),
            ("Database connection dropped", _drop(found.get("database-drop"))),
            ("SMTP faults", _faults(found)),
            ("Events replayed", _events(found.get("events-replay"))),
            ("Load", _load_figures(found.get("load"))),
        ):
            if lines:
                parts += [f"#### {title}", "", *lines, ""]
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="replace the figures section of FILE")
    args = parser.parse_args()
    text = render()
    if not args.write:
        print(text)
        return
    path = Path(args.write)
    doc = path.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path} has no {START} ... {END} section")
    path.write_text(pattern.sub(lambda _: f"{START}\n{text}{END}", doc))


if __name__ == "__main__":
    main()
