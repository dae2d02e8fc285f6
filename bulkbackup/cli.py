"""The command line: parses arguments and calls the library; nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import redis

from bulkbackup import __version__, config
from bulkbackup.errors import BulkbackupError

log = logging.getLogger("bulkbackup")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bulkbackup",
        description="Back up the public repositories of GitHub users into durable storage.",
    )
    p.add_argument("--config", metavar="PATH",
                   help="settings file (default: $BULKBACKUP_CONFIG or ./config.yaml)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks on errors (also BULKBACKUP_DEBUG=1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--version", action="version", version=f"bulkbackup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("ingest", help="stream a GitHub users dump into the `tracked` set")
    s.add_argument("dump", metavar="DUMP", help="dump path, or - for stdin (plain or gzip)")
    s.add_argument("--limit", type=_non_negative, metavar="N",
                   help="stop after N accepted logins (each dump line counts)")
    s.add_argument("--batch-size", type=_positive, metavar="N",
                   help="logins per ZADD command (default: ingest.batch_size)")
    s.add_argument("--rejects", metavar="FILE",
                   help="write every rejected line with its number and reason to FILE")

    s = sub.add_parser("run", help="drain `tracked` with a pool of worker processes")
    s.add_argument("--procs", type=_positive, metavar="N",
                   help="worker processes (default: run.procs)")
    s.add_argument("--max-users", type=_positive, metavar="N",
                   help="stop claiming after N users")
    s.add_argument("--no-stats", action="store_true", help="skip the stats pass at the end")

    s = sub.add_parser("stats", help="count archives per user, write SyncdRepos, print totals")
    s.add_argument("--json", action="store_true", help="print the totals as one JSON object")
    s.add_argument("--no-write", action="store_true", help="report only; write nothing")

    s = sub.add_parser("sync", help="back up the named users now, without the queue")
    s.add_argument("logins", nargs="+", metavar="LOGIN")

    s = sub.add_parser("show", help="what the store holds for one user")
    s.add_argument("login", metavar="LOGIN")
    s.add_argument("--json", action="store_true", help="print as JSON")

    sub.add_parser("rebuild", help="rebuild `tracked` from the durable store")
    sub.add_parser("reset", help="set every score to 0: every user is due again")

    s = sub.add_parser("serve", help="the web server: status, search, downloads, metrics")
    s.add_argument("--host", metavar="H", help="address to listen on (default: serve.host)")
    s.add_argument("--port", type=_non_negative, metavar="P",
                   help="port to listen on (default: serve.port)")

    s = sub.add_parser("track", help="add users by hand (as ingest: ZADD NX -inf)")
    s.add_argument("logins", nargs="+", metavar="LOGIN")
    return p


def _dispatch(args: argparse.Namespace, settings: config.Settings) -> int:
    cmd = args.command
    if cmd == "ingest":
        from bulkbackup.ingest import ingest

        result = ingest(settings, args.dump, limit=args.limit, batch_size=args.batch_size,
                        rejects_path=args.rejects)
        print(result.summary(), file=sys.stderr)
        return 0
    if cmd == "reset":
        from bulkbackup import tracked

        n = tracked.reset(tracked.connect(settings.redis))
        print(f"reset: {n} users are due again", file=sys.stderr)
        return 0
    if cmd == "run":
        from bulkbackup.runner import run

        return run(settings, procs=args.procs, max_users=args.max_users,
                   with_stats=not args.no_stats)
    if cmd == "stats":
        from bulkbackup.stats import stats_command

        return stats_command(settings, as_json=args.json, write=not args.no_write)
    if cmd == "sync":
        from bulkbackup.backup import sync_command

        return sync_command(settings, args.logins)
    if cmd == "show":
        from bulkbackup.show import show_command

        return show_command(settings, args.login, as_json=args.json)
    if cmd == "rebuild":
        from bulkbackup.stats import rebuild_command

        return rebuild_command(settings)
    if cmd == "serve":
        from bulkbackup.web.command import serve_command

        return serve_command(settings, args.host, args.port)
    if cmd == "track":
        from bulkbackup.web.command import track_command

        return track_command(settings, args.logins)
    raise AssertionError(cmd)  # pragma: no cover - argparse refuses unknown commands


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("BULKBACKUP_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = config.load(args.config)
        from bulkbackup.redact import install_redaction

        install_redaction(settings.github.tokens)
        return _dispatch(args, settings)
    except BulkbackupError as exc:
        if debug:
            raise
        print(f"bulkbackup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except redis.RedisError as exc:
        if debug:
            raise
        print(f"bulkbackup: error: redis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bulkbackup: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, unless debugging
        if debug:
            raise
        from bulkbackup.redact import redact

        print(f"bulkbackup: internal error: {type(exc).__name__}: {redact(str(exc))[:300]} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 1
