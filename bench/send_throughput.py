"""Send throughput: the whole pipeline against raw smtplib, to the same SMTP sink.

What is measured: N queued messages (10,000; `--quick` 1,000) of one campaign step with open and
click tracking (an HTML body of about 3 KB with three links) sent by TWO worker processes, each
calling `campaigns.services.dispatch_due()` until a pass claims nothing (what
`manage.py send_due --until-idle` does): claim (SELECT ... FOR UPDATE SKIP LOCKED), render and
compose, SMTP, and the outcome recorded through the state machine (message, event, recipient), on
PostgreSQL. Two SendingAccounts point at the sink, with limits far above N. The audience is
prepared beforehand by `campaign_launch(enqueue=False)` + `run_prepare` (not timed).

Baseline: the same N messages, composed beforehand with `campaigns.mail.compose` (the same bytes
and envelopes the pipeline sends), sent by TWO processes with one persistent `smtplib.SMTP`
connection each, MAIL/RCPT/DATA per message, no database.

Three rounds (`--rounds`; `--quick` one), each one raw run then one pipeline run, and each side's
best run counts: on a shared machine whose speed drifts by 20-40% within minutes, interleaving
puts the drift on both sides, and the best run is the least disturbed one (timeit's rule).

The sink advertises PIPELINING (RFC 2920), as Postfix, Exim, Gmail and Exchange do: the
pipeline uses it (MAIL, RCPT and DATA in one write), smtplib cannot (one command, one round
trip). `--no-pipelining` measures the pipeline without it.

The sink is the same for both: `manage.py smtp_simulator --no-spread` (aiosmtpd, accepts every
address and keeps nothing) in its own process. Every sender waits for one `go` line, so process
start-up is left out of both sides; the time is from the first sender's start to the last
sender's end.

Target: pipeline msgs/s >= 0.8 x raw msgs/s. The per-message cost breakdown (database statements
and their time, COMMIT, composing, the SMTP conversation, connecting) is measured inside the
workers, from outside the code under test.

    python -m bench.send_throughput [--quick] [--messages N] [--rounds R] [--profile FILE]

`--profile FILE` runs the first worker under cProfile and writes its stats to FILE;
`BENCH_SQL_DETAIL=1` makes each worker print the dozen statements it spent most time in. For a
change worth a few percent, which this ratio's run-to-run noise hides, `python -m
bench.send_cpu` measures one worker's CPU per email (and its database backend's and the
sink's), the median of several runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Result, say, table

NAME = "send"
FULL_MESSAGES = 10_000
QUICK_MESSAGES = 1_000
WORKERS = 2
TARGET = 0.8
ROUNDS = 3
ROOT = Path(__file__).resolve().parent.parent

SUBJECT = "{{ contact.first_name }}, your {{ contact.company }} pipeline review"
HTML_BODY = """<!doctype html>
<html><head><meta charset="utf-8"><title>Pipeline review</title></head>
<body style="margin:0;padding:0;background:#f4f5f7;font-family:Helvetica,Arial,sans-serif">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td align="center" style="padding:24px 12px">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0"
       style="background:#ffffff;border-radius:6px">
<tr><td style="padding:24px 32px 8px 32px;font-size:20px;color:#1f2933">
  <strong>Hi {{ contact.first_name }},</strong>
</td></tr>
<tr><td style="padding:8px 32px;font-size:15px;line-height:22px;color:#3e4c59">
  <p>Teams like {{ contact.company }} told us the same thing this quarter: leads arrive from
  five places, half of them are never followed up, and nobody can say which campaign brought
  the customers who stayed. We built a short review that shows where your pipeline leaks, in
  about twenty minutes, with your own numbers.</p>
  <p>Here is what we look at together:</p>
  <ul>
    <li>how many of last month's leads got a first reply within a day;</li>
    <li>which sources bring opportunities, not only contacts;</li>
    <li>where follow-ups stop, and why.</li>
  </ul>
  <p><a href="https://www.example.com/pipeline-review?utm_source=leadcenter&amp;utm_medium=email"
        style="color:#0b69a3">Book your pipeline review</a> or read
  <a href="https://www.example.com/customers/northwind-case-study" style="color:#0b69a3">how
  Northwind doubled its reply rate</a> first.</p>
  <p>If now is not a good time, just reply to this email and tell me when would be.</p>
  <p>Best regards,<br>Dana Whitfield<br>Account Executive, LeadCenter Sales</p>
</td></tr>
<tr><td style="padding:16px 32px 24px 32px;font-size:12px;line-height:18px;color:#7b8794">
  LeadCenter Sales &middot; 100 Market Street &middot; Springfield<br>
  <a href="https://www.example.com/privacy" style="color:#7b8794">Privacy policy</a> &middot;
  <a href="{{ unsubscribe_url }}" style="color:#7b8794">Unsubscribe</a>
</td></tr>
</table>
</td></tr>
</table>
</body></html>
"""
TEXT_BODY = """Hi {{ contact.first_name }},

Teams like {{ contact.company }} told us the same thing this quarter: leads arrive from five
places, half of them are never followed up, and nobody can say which campaign brought the
customers who stayed. We built a short review that shows where your pipeline leaks, in about
twenty minutes, with your own numbers.

Book your pipeline review: https://www.example.com/pipeline-review

Best regards,
Dana Whitfield
Account Executive, LeadCenter Sales

Unsubscribe: {{ unsubscribe_url }}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(port: int, tmp: str, *, pipelining: bool = True) -> subprocess.Popen:
    """The SMTP sink, `manage.py smtp_simulator` in its own process, every address accepted;
    wait for it with _wait_for_port()."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [
            sys.executable,
            "manage.py",
            "smtp_simulator",
            "--port",
            str(port),
            "--no-spread",
            "--bounce-maildir",
            os.path.join(tmp, "bounces"),
            *([] if pipelining else ["--no-pipelining"]),
        ],
        cwd=ROOT,
        env=common.bench_environ(),
        stdout=subprocess.DEVNULL,
    )


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the SMTP sink exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the SMTP sink did not listen on port {port} within {timeout:.0f}s")


def _setup(n: int, port: int) -> int:
    """Contacts, list, accounts, campaign, step; launch and prepare. Returns the run id."""
    from campaigns.models import Campaign, CampaignStep, SendingAccount
    from campaigns.services import campaign_launch, run_prepare
    from contacts.models import Contact, ContactList

    common.truncate()
    contact_list = ContactList.objects.create(name="Send benchmark")
    Contact.objects.bulk_create(
        (
            Contact(
                email=f"lead{i}@customer{i % 97}.example.com",
                first_name=f"First{i}",
                last_name=f"Last{i}",
                company=f"Company {i % 500} Ltd",
            )
            for i in range(n)
        ),
        batch_size=5000,
    )
    through = Contact.lists.through
    through.objects.bulk_create(
        (
            through(contact_id=pk, contactlist_id=contact_list.pk)
            for pk in Contact.objects.values_list("pk", flat=True)
        ),
        batch_size=5000,
    )
    limit = 2_000_000_000  # far above N: the limits never hold the benchmark back
    accounts = SendingAccount.objects.bulk_create(
        SendingAccount(
            name=f"Bench account {k}",
            from_email=f"sales{k}@leadcenter.example.com",
            from_name="Dana Whitfield",
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_security=SendingAccount.Security.NONE,
            return_path=f"bounces{k}@leadcenter.example.com",
            daily_limit=limit,
            per_minute_limit=limit,
            active_weekdays="1234567",
        )
        for k in range(1, 3)
    )
    campaign = Campaign.objects.create(name="Send benchmark", track_opens=True, track_clicks=True)
    campaign.lists.add(contact_list)
    campaign.accounts.add(*accounts)
    CampaignStep.objects.create(
        campaign=campaign, position=1, subject=SUBJECT, html_body=HTML_BODY, text_body=TEXT_BODY
    )
    run = campaign_launch(campaign=campaign, enqueue=False)
    run = run_prepare(run=run)
    if run.total_recipients != n or run.total_filtered:
        raise SystemExit(
            f"set-up went wrong: {run.total_recipients} recipients, "
            f"{run.total_filtered} filtered, expected {n} and 0"
        )
    return run.pk


def _compose_all(run_id: int, path: Path) -> int:
    """The exact messages the pipeline will send, composed once, for the raw baseline."""
    from campaigns.mail import TemplateCache, compose
    from campaigns.models import Message

    cache = TemplateCache()
    out: list[tuple[str, str, bytes]] = []
    messages = Message.objects.filter(run_id=run_id).select_related(
        "recipient__contact", "step", "run__campaign", "account"
    )
    for m in messages.order_by("pk").iterator(chunk_size=2000):
        email = compose(
            message_pk=m.pk,
            message_id=m.message_id,
            step=m.step,
            contact=m.recipient.contact,
            recipient_email=m.recipient.email.strip(),
            account=m.account,
            track_opens=m.run.campaign.track_opens,
            track_clicks=m.run.campaign.track_clicks,
            cache=cache,
        )
        out.append((email.envelope_from, email.recipient, email.data))
    with path.open("wb") as fh:
        pickle.dump(out, fh)
    return round(sum(len(d) for _, _, d in out) / max(1, len(out)))


def _run_senders(
    commands: list[list[str]], env: dict[str, str], sink_pid: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Start every sender, wait until all are ready, say go to all, collect their results and
    the CPU the sink and the whole machine used meanwhile."""
    processes = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for cmd in commands
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            while line and line.strip() != "ready":
                line = process.stdout.readline()
            if not line:
                raise SystemExit(f"a sender exited before it was ready: {commands}")
        sink_cpu = common.process_cpu_seconds(sink_pid)
        snapshot = common.cpu_snapshot()
        busy = common.machine_busy_seconds()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            out, _ = process.communicate()
            if process.returncode:
                raise SystemExit(f"a sender failed with exit code {process.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        busy = common.machine_busy_seconds() - busy
        ours = {sink_pid, *(p.pid for p in processes), *(r.get("backend_pid", 0) for r in results)}
        cpu = {
            "sink": common.process_cpu_seconds(sink_pid) - sink_cpu,
            "machine": busy,
            **common.cpu_by_group(
                snapshot, common.cpu_snapshot(), database=_database_name(), ours=ours
            ),
        }
        return results, cpu
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _database_name() -> str:
    from django.db import connection

    return str(connection.settings_dict["NAME"])


def _elapsed(results: list[dict[str, Any]]) -> float:
    return max(r["end"] for r in results) - min(r["start"] for r in results)


def run(
    *,
    quick: bool = False,
    messages: int | None = None,
    profile: str | None = None,
    pipelining: bool = True,
    rounds: int | None = None,
) -> list[Result]:
    common.setup_django("send")
    common.migrate()
    from django.db import connection

    from campaigns.models import Message
    from tracking.models import TrackingEvent

    n = messages or (QUICK_MESSAGES if quick else FULL_MESSAGES)
    rounds = rounds or (1 if quick else ROUNDS)
    env = common.bench_environ()
    python = sys.executable
    say(f"== send throughput: {n:,} messages, {WORKERS} senders, one SMTP sink ==")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="lc-bench-") as tmp:
        sink = start_sink(port, tmp, pipelining=pipelining)
        try:
            _wait_for_port(port, sink)
            run_id = _setup(n, port)
            size = _compose_all(run_id, Path(tmp) / "messages.pickle")
            say(f"set-up done: {n:,} queued messages of {size:,} bytes on average")

            # Rounds of one raw run then one pipeline run, interleaved, so that a drift of the
            # machine's speed during the benchmark weighs on both sides; each side's best run
            # counts (as timeit's minimum: the run least disturbed by the rest of the machine).
            raw_runs: list[tuple[float, dict[str, float]]] = []
            pipe_runs: list[tuple[float, list[dict[str, Any]], dict[str, float], int]] = []
            for round_ in range(rounds):
                results, cpu = _run_senders(
                    [
                        [
                            python,
                            "-m",
                            "bench.worker",
                            "raw",
                            "--messages",
                            str(Path(tmp) / "messages.pickle"),
                            "--index",
                            str(k),
                            "--of",
                            str(WORKERS),
                            "--port",
                            str(port),
                        ]
                        for k in range(WORKERS)
                    ],
                    env,
                    sink.pid,
                )
                refused = sum(r["refused"] for r in results)
                if refused:
                    raise SystemExit(f"the sink refused {refused} raw messages")
                cpu.update(
                    senders=sum(r["cpu_seconds"] for r in results), seconds=_elapsed(results)
                )
                raw_runs.append((_elapsed(results), cpu))

                if round_:
                    run_id = _setup(n, port)  # the same queued messages again
                common.execute_autocommit("VACUUM ANALYZE")
                connection.close()
                commands = []
                for k in range(WORKERS):
                    cmd = [python, "-m", "bench.worker", "pipeline"]
                    if profile and k == 0 and not round_:
                        cmd += ["--profile", profile]
                    commands.append(cmd)
                workers, pipe_cpu = _run_senders(commands, env, sink.pid)
                pipe_cpu.update(
                    senders=sum(w["cpu_seconds"] for w in workers),
                    backends=sum(w["backend_cpu_seconds"] for w in workers),
                    seconds=_elapsed(workers),
                )
                sent = Message.objects.filter(run_id=run_id, status=Message.Status.SENT).count()
                errors = sorted({e for w in workers for e in w["account_errors"]})
                if sent != n or errors:
                    say(f"WARNING: {sent:,} of {n:,} messages sent; account errors: {errors}")
                pipe_runs.append((_elapsed(workers), workers, pipe_cpu, sent))
                say(
                    f"round {round_ + 1} of {rounds}: raw {n / raw_runs[-1][0]:,.0f} msgs/s, "
                    f"pipeline {sent / pipe_runs[-1][0]:,.0f} msgs/s"
                )
        finally:
            sink.terminate()
            sink.wait(timeout=10)

    events = TrackingEvent.objects.filter(message__run_id=run_id).count()  # the last run's
    raw_seconds, raw_cpu = min(raw_runs, key=lambda run: run[0])
    pipeline_seconds, workers, pipe_cpu, sent = min(pipe_runs, key=lambda run: run[0] / run[3])
    raw_rate = n / raw_seconds
    pipe_rate = sent / pipeline_seconds
    ratio = pipe_rate / raw_rate
    say(
        table(
            ["side", "messages", "seconds", "msgs/s"],
            [
                [
                    f"raw smtplib, {WORKERS} connections (best of {rounds})",
                    n,
                    raw_seconds,
                    raw_rate,
                ],
                [
                    f"pipeline, {WORKERS} worker processes (best of {rounds})",
                    sent,
                    pipeline_seconds,
                    pipe_rate,
                ],
            ],
        )
    )
    say(
        f"raw runs: {', '.join(f'{s:.2f}s' for s, _ in raw_runs)}; pipeline runs: "
        f"{', '.join(f'{s:.2f}s' for s, *_ in pipe_runs)}; "
        f"events recorded (last run): {events:,} ({events / max(1, sent):.1f} per message)"
    )
    _breakdown(workers, sent, 1000.0 * raw_seconds * WORKERS / n)
    _cpu_budget(raw_cpu, n, pipe_cpu, sent)
    result = Result(NAME, "pipeline msgs/s / raw smtplib msgs/s", ratio, TARGET, True)
    say(f"ratio pipeline/raw: {ratio:.3f} (target >= {TARGET}) {result.verdict}")
    return [result]


def _breakdown(workers: list[dict[str, Any]], sent: int, raw_ms_per_message: float) -> None:
    """Worker time per message, split by where it went (summed over the workers)."""
    per = 1000.0 / max(1, sent)
    busy = sum(w["end"] - w["start"] for w in workers)
    db = sum(w["db_seconds"] for w in workers)
    commit = sum(w["commit_seconds"] for w in workers)
    compose = sum(w["compose_seconds"] for w in workers)
    smtp_io = sum(w["smtp_seconds"] for w in workers)
    connect = sum(w["smtp_connect_seconds"] for w in workers)
    other = busy - db - commit - compose - smtp_io - connect
    statements: dict[str, int] = {}
    for w in workers:
        for verb, count in w["statements"].items():
            statements[verb] = statements.get(verb, 0) + count
    n_statements = sum(statements.values())
    commits = sum(w["commits"] for w in workers)
    connects = sum(w["smtp_connects"] for w in workers)
    say("per message, in worker time (both workers summed):")
    say(
        table(
            ["part", "ms/message", "share", "count/message"],
            [
                [
                    "database statements (round trips)",
                    db * per,
                    db / busy,
                    n_statements / max(1, sent),
                ],
                ["COMMIT", commit * per, commit / busy, commits / max(1, sent)],
                ["compose (render, tokens, MIME)", compose * per, compose / busy, 1.0],
                ["SMTP MAIL/RCPT/DATA", smtp_io * per, smtp_io / busy, 1.0],
                ["SMTP connect + QUIT", connect * per, connect / busy, connects / max(1, sent)],
                ["other Python (ORM, state machine, ...)", other * per, other / busy, ""],
                ["total", busy * per, 1.0, ""],
                ["raw smtplib, for comparison", raw_ms_per_message, "", 1.0],
            ],
        )
    )
    verbs = ", ".join(
        f"{verb} {count / max(1, sent):.2f}"
        for verb, count in sorted(statements.items(), key=lambda kv: -kv[1])
    )
    say(f"statements per message: {verbs}")


def _cpu_budget(raw: dict[str, float], n_raw: int, pipe: dict[str, float], n_pipe: int) -> None:
    """CPU per message by process, for both sides: the machine has os.cpu_count() cores and,
    when it is saturated, every CPU-millisecond anywhere costs throughput."""
    cores = os.cpu_count() or 1

    def per(side: dict[str, float], key: str, n: int) -> float:
        return 1000.0 * side.get(key, 0.0) / max(1, n)

    def other(side: dict[str, float], n: int) -> float:
        return 1000.0 * _foreign(side) / max(1, n)

    say(f"CPU per message by process (ms of CPU; {cores} cores):")
    say(
        table(
            ["process", "raw", "pipeline"],
            [
                [
                    "senders (smtplib clients / workers)",
                    per(raw, "senders", n_raw),
                    per(pipe, "senders", n_pipe),
                ],
                ["PostgreSQL backends of the workers", 0.0, per(pipe, "backends", n_pipe)],
                ["SMTP sink", per(raw, "sink", n_raw), per(pipe, "sink", n_pipe)],
                [
                    "PostgreSQL background (WAL writer, ...)",
                    per(raw, "postgres", n_raw),
                    per(pipe, "postgres", n_pipe),
                ],
                ["= this benchmark", 1000.0 * _ours(raw) / n_raw, 1000.0 * _ours(pipe) / n_pipe],
                [
                    "everything else: other processes, kernel",
                    other(raw, n_raw),
                    other(pipe, n_pipe),
                ],
                ["machine busy", per(raw, "machine", n_raw), per(pipe, "machine", n_pipe)],
                [
                    "machine utilisation %",
                    100.0 * raw["machine"] / (raw["seconds"] * cores),
                    100.0 * pipe["machine"] / (pipe["seconds"] * cores),
                ],
            ],
        )
    )
    for label, side in (("raw", raw), ("pipeline", pipe)):
        share = _foreign(side) / max(1e-9, side["seconds"] * cores)
        if share > 0.10:
            say(
                f"NOTE: during the {label} phase {100 * share:.0f}% of the machine's CPU went "
                "to processes outside this benchmark (or the kernel): the machine was shared, "
                "its figures are noisy."
            )
    estimate = _ours(raw) / n_raw / (_ours(pipe) / n_pipe)
    say(
        f"CPU-bound estimate of the ratio (this benchmark's own CPU per message, raw/pipeline): "
        f"{estimate:.3f}"
    )


def _ours(side: dict[str, float]) -> float:
    return sum(side.get(k, 0.0) for k in ("senders", "backends", "sink", "postgres"))


def _foreign(side: dict[str, float]) -> float:
    return max(0.0, side["machine"] - _ours(side))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.send_throughput")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES:,} messages")
    parser.add_argument("--messages", type=int, default=None, help="how many messages")
    parser.add_argument("--profile", default=None, help="cProfile the first worker into FILE")
    parser.add_argument(
        "--no-pipelining", action="store_true", help="the sink does not advertise PIPELINING"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"raw and pipeline runs each ({ROUNDS})"
    )
    args = parser.parse_args(argv)
    for result in run(
        quick=args.quick,
        messages=args.messages,
        profile=args.profile,
        pipelining=not args.no_pipelining,
        rounds=args.rounds,
    ):
        say(result.line())


if __name__ == "__main__":
    main()
