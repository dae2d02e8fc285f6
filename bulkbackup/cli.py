"""The command line: parses arguments and calls the library; nothing else."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from bulkbackup import __version__, config
from bulkbackup.errors import EXIT_INTERRUPTED, BulkbackupError, printable

log = logging.getLogger("bulkbackup")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer not below ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its messages
    return parse


def _global_options(top: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand. After it, SUPPRESS leaves the value
    given before it (or the top parser's default) when the option is not repeated."""
    g = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    default: Any = None if top else argparse.SUPPRESS
    g.add_argument("--config", metavar="PATH", default=default,
                   help="settings file (default: $BULKBACKUP_CONFIG or ./config.yaml)")
    g.add_argument("--debug", action="store_true", default=False if top else default,
                   help="show tracebacks on errors (also BULKBACKUP_DEBUG=1)")
    g.add_argument("-v", "--verbose", action="store_true", default=False if top else default,
                   help="log progress details")
    return g


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bulkbackup", allow_abbrev=False, parents=[_global_options(top=True)],
        description="Back up the public repositories of GitHub users into durable storage.",
        epilog="--config, --debug and -v may also follow the command.",
    )
    p.add_argument("--version", action="version", version=f"bulkbackup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_global_options(top=False)]

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=common,
                              allow_abbrev=False)

    _job_commands(command)
    _archive_commands(command)
    return p


_Command = Callable[[str, str], argparse.ArgumentParser]


def _job_commands(command: _Command) -> None:
    """The commands that fill and drain `tracked`."""
    s = command("ingest", "stream a GitHub users dump into the `tracked` set")
    s.add_argument("dump", metavar="DUMP", help="dump path, or - for stdin (plain or gzip)")
    s.add_argument("--limit", type=at_least(0), metavar="N",
                   help="stop after N accepted logins (each dump line counts)")
    s.add_argument("--batch-size", type=at_least(1), metavar="N",
                   help="logins per ZADD command (default: ingest.batch_size)")
    s.add_argument("--rejects", metavar="FILE",
                   help="write every rejected line with its number and reason to FILE")

    s = command("run", "drain `tracked` with a pool of worker processes")
    s.add_argument("--procs", type=at_least(1), metavar="N",
                   help="worker processes (default: run.procs)")
    s.add_argument("--max-users", type=at_least(1), metavar="N",
                   help="stop claiming after N users")
    s.add_argument("--no-stats", action="store_true", help="skip the stats pass at the end")
    s.add_argument("--server", metavar="URL",
                   help="lease users from `bulkbackup serve` at URL and send the archives "
                        "there: no Redis, no store (env BULKBACKUP_SERVER; the worker token: "
                        "env BULKBACKUP_WORKER_TOKEN)")

    s = command("stats", "count archives per user, write SyncdRepos, print totals")
    s.add_argument("--json", action="store_true", help="print the totals as one JSON object")
    s.add_argument("--no-write", action="store_true",
                   help="report only; write nothing (Redis and store untouched)")

    s = command("sync", "back up the named users now, without the queue")
    s.add_argument("logins", nargs="+", metavar="LOGIN")

    command("rebuild", "rebuild `tracked` from the durable store")
    command("reset", "set every score to 0: every user is due again")

    s = command("track", "add users by hand (as ingest: ZADD NX -inf)")
    s.add_argument("logins", nargs="+", metavar="LOGIN")

    s = command("events", "read GH Archive hours: mark the owners whose repositories changed")
    s.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="hour files (gzip or plain JSON lines) or - for stdin; none: the "
                        "hours of events.url")
    s.add_argument("--from", dest="first", metavar="HOUR",
                   help="first hour (YYYY-MM-DD-H or RFC 3339; default: where reading stopped)")
    s.add_argument("--to", dest="last", metavar="HOUR",
                   help="last hour, included (default: the newest published)")
    s.add_argument("--follow", action="store_true",
                   help="then wait for each next hour, forever (Ctrl-C stops)")
    s.add_argument("--track-new", action="store_true",
                   help="also track owners not tracked yet (as ingest)")


def _archive_commands(command: _Command) -> None:
    """The commands that read (and check) what the store holds."""
    s = command("show", "what the store holds for one user (read-only)")
    s.add_argument("login", metavar="LOGIN")
    s.add_argument("--json", action="store_true", help="print as JSON")

    s = command("restore", "rebuild bare mirrors from the store alone (no GitHub)")
    s.add_argument("target", metavar="LOGIN[/REPO]", help="a user (all its repositories) or one")
    s.add_argument("--to", default=".", metavar="DIR",
                   help="restore into DIR/<login>/<repo>.git (default: .)")
    s.add_argument("--at", metavar="TIME", help="the archive as it was at TIME (RFC 3339)")
    s.add_argument("--zip", action="store_true", help="also fetch the zips, beside the mirrors")
    s.add_argument("--force", action="store_true",
                   help="replace an earlier restore of the same repository")

    s = command("verify", "prove archives restorable; record VerifiedAt or Error")
    s.add_argument("logins", nargs="*", metavar="LOGIN")
    s.add_argument("--sample", type=at_least(1), metavar="N",
                   help="verify N users drawn at random from the store")
    s.add_argument("--json", action="store_true", help="print the figures as one JSON object")

    s = command("worker-token", "tokens of remote workers (run --server): add, list, revoke")
    tok = s.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    t = tok.add_parser("add", help="make a token; printed once", allow_abbrev=False)
    t.add_argument("name", metavar="NAME")
    tok.add_parser("list", help="names, creation, last use (never tokens)", allow_abbrev=False)
    t = tok.add_parser("revoke", help="end the token and its leases at once",
                       allow_abbrev=False)
    t.add_argument("name", metavar="NAME")
    t.add_argument("--redo", action="store_true",
                   help="also make every user it archived due again")

    s = command("serve", "the web server: status, search, downloads, metrics")
    s.add_argument("--host", metavar="H", help="address to listen on (default: serve.host)")
    s.add_argument("--port", type=at_least(0), metavar="P",
                   help="port to listen on (default: serve.port)")


def _dispatch(args: argparse.Namespace, settings: config.Settings) -> int:
    from bulkbackup import commands

    cmd = args.command
    if cmd == "ingest":
        return commands.ingest_command(settings, args.dump, args.limit, args.batch_size,
                                       args.rejects)
    if cmd == "reset":
        return commands.reset_command(settings)
    if cmd == "run":
        from bulkbackup.commands_tokens import remote_target

        return commands.run_command(settings, args.procs, args.max_users, not args.no_stats,
                                    remote_target(args.server))
    if cmd == "stats":
        return commands.stats_command(settings, as_json=args.json, write=not args.no_write)
    if cmd == "sync":
        return commands.sync_command(settings, args.logins)
    if cmd == "show":
        return commands.show_command(settings, args.login, as_json=args.json)
    if cmd == "restore":
        return commands.restore_command(settings, args.target, args.to, args.at, args.zip,
                                        args.force)
    if cmd == "verify":
        from bulkbackup.commands_verify import verify_command
        return verify_command(settings, args.logins, args.sample, as_json=args.json)
    if cmd == "rebuild":
        return commands.rebuild_command(settings)
    if cmd == "serve":
        return commands.serve_command(settings, args.host, args.port)
    if cmd == "worker-token":
        from bulkbackup.commands_tokens import worker_token_command

        return worker_token_command(settings, args.token_action, getattr(args, "name", None),
                                    getattr(args, "redo", False))
    if cmd == "track":
        return commands.track_command(settings, args.logins)
    if cmd == "events":
        from bulkbackup.events.report import events_command

        return events_command(settings, args.sources, args.first, args.last, args.follow,
                              args.track_new)
    raise AssertionError(cmd)  # pragma: no cover - argparse refuses unknown commands


def _is_redis_error(exc: Exception) -> bool:
    """redis-py's errors, without importing it: the commands that never reach Redis
    (restore, verify, show, sync) start faster without it, and cannot raise its errors."""
    module = sys.modules.get("redis")
    return module is not None and isinstance(exc, module.RedisError)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed. An unknown option is refused by the subcommand's parser (its
    usage, not the top-level one: the subparser hands unknown options up to the top), with
    the closest option it has: `run --proc 4` -> "did you mean --procs?"."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        target = _subparsers(parser).get(args.command, parser)
        message = f"unrecognized arguments: {' '.join(unknown)}"
        hint = _closest_option(target, unknown)
        target.error(f"{message} (did you mean {hint}?)" if hint else message)
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def _closest_option(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str | None:
    """The option of `parser` closest to the first unknown option given, if one is close."""
    given = next((u.split("=", 1)[0] for u in unknown if u.startswith("--")), None)
    if given is None:
        return None
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.7)
    return close[0] if close else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
        # Debugging adds the traceback; the line and the exit code stay (scripts and
        # systemd's RestartPreventExitStatus=2 read the code).
        if debug:
            traceback.print_exc()
        print(f"bulkbackup: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bulkbackup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 (a bug: one line, and the traceback when debugging)
        if debug:
            traceback.print_exc()
        if _is_redis_error(exc):
            print(f"bulkbackup: error: redis: {exc}", file=sys.stderr)
            return 1
        from bulkbackup.redact import redact

        print(f"bulkbackup: internal error: {type(exc).__name__}: {redact(str(exc))[:300]} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 1
