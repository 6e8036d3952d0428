from __future__ import annotations

from django.core.management.base import BaseCommand

from campaigns.simulator import RULES, SPREAD, serve_forever


class Command(BaseCommand):
    help = (
        "The demo's simulated internet: an SMTP server on 127.0.0.1 whose replies depend on "
        "the recipient's address (see README, 'The simulated internet')."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=2525)
        parser.add_argument(
            "--bounce-maildir",
            default="var/bounces",
            help="Where DSNs of accepted-then-bounced mail are written (a Maildir).",
        )
        parser.add_argument(
            "--no-spread",
            action="store_true",
            help="Accept every address without a keyword (no hash-based mix of outcomes).",
        )
        parser.add_argument(
            "--no-pipelining",
            action="store_true",
            help="Do not advertise PIPELINING (RFC 2920): clients send one command at a time.",
        )

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"Simulated internet listening on 127.0.0.1:{options['port']}")
        for keyword, rule in RULES.items():
            self.stdout.write(f"  address containing {keyword!r:16} -> {rule.name}")
        if not options["no_spread"]:
            share = sum(n for n, _ in SPREAD) / 10
            self.stdout.write(f"  other addresses: {share:.1f}% get one of those by hash")
        serve_forever(
            port=options["port"],
            spread=not options["no_spread"],
            bounce_maildir=options["bounce_maildir"],
            pipelining=not options["no_pipelining"],
        )
