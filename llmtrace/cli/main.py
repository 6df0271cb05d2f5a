"""The `llmtrace` command: serve, core, shim, validate, migrate, sql.

Results go to stdout and logs to stderr. Every subcommand loads the configuration the same
way (file < environment < flags) and exits 2, listing every problem, when it is invalid.
Server and storage modules are imported only by the subcommand that needs them, so
`llmtrace validate` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable

import structlog
import yaml

from llmtrace.config import ConfigError, ConfigIssue, LoadedConfig, load_config, redacted_dict
from llmtrace.logs import configure_logging

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE
EXIT_INTERRUPTED = 130  # what a shell reports for a process killed by SIGINT

#: argparse destination -> the key path it overrides.
_FLAG_KEYS = {
    "grpc_listen_addr": "grpc.listen_addr",
    "metrics_listen_addr": "metrics.listen_addr",
    "database_path": "storage.database_path",
    "log_level": "logging.level",
    "log_format": "logging.format",
    "max_rows": "sql.max_rows",
    "listen_addr": "listen_addr",
    "upstream_url": "upstream_url",
    "workers": "workers",
    "core": "core_addr",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG if exc.code else EXIT_OK
    try:
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`llmtrace sql ... | head`). Point stdout at devnull so
        # the interpreter's final flush does not fail again with a traceback.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so docs and tests can render its help)."""
    parser = argparse.ArgumentParser(
        prog="llmtrace",
        description="LLMTrace: observability and security for LLM API traffic.",
        epilog="Configuration: defaults < YAML file < LLMTRACE_* environment < flags. "
        "See docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"llmtrace {_version()}")
    parser.add_argument("--config", metavar="FILE", default=None, help=_CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: without --config here, keep the value given before the subcommand.
    config.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (logging.level)")
    logs.add_argument("--log-format", metavar="FORMAT", help="text or json (logging.format)")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-path", metavar="PATH", help="DuckDB file (storage.database_path)")
    server = argparse.ArgumentParser(add_help=False, parents=[config, logs, database])
    server.add_argument("--grpc-listen-addr", metavar="HOST:PORT", help="gRPC address (grpc.listen_addr)")
    server.add_argument(
        "--metrics-listen-addr", metavar="HOST:PORT", help="Prometheus address (metrics.listen_addr)"
    )
    server.add_argument(
        "--ready-file",
        metavar="PATH",
        help="once serving, write a JSON file with the bound addresses (useful with port 0)",
    )

    http = argparse.ArgumentParser(add_help=False)
    http.add_argument("--listen-addr", metavar="HOST:PORT", help="HTTP proxy address (listen_addr)")
    http.add_argument("--upstream-url", metavar="URL", help="provider API root (upstream_url)")
    http.add_argument("--workers", metavar="N", type=int, help="shim worker processes (workers)")

    commands.add_parser(
        "serve",
        parents=[server, http],
        help="run LLMTrace: the core and the HTTP proxy (shim) together",
        description="Run LLMTrace: start the core (a supervised child process, restarted if it "
        "crashes), then the HTTP proxy on listen_addr. On SIGTERM or SIGINT the proxy drains and "
        "flushes its spans first, the core stops last.",
    )
    shim = commands.add_parser(
        "shim",
        parents=[config, logs, http],
        help="run the HTTP proxy alone, shipping spans to a core elsewhere",
        description="Run the HTTP proxy (shim) alone. Spans go to the core at --core (core_addr; "
        "default grpc.listen_addr); while it is unreachable they wait in the spool.",
    )
    shim.add_argument("--core", metavar="HOST:PORT", help="the core's gRPC address (core_addr)")
    shim.add_argument(
        "--ready-file",
        metavar="PATH",
        help="once serving, write a JSON file with the bound addresses (useful with port 0)",
    )
    commands.add_parser(
        "core",
        parents=[server],
        help="run the core: gRPC ingest and query over the DuckDB file",
        description="Run the core: gRPC ingest and query services, sole writer of the DuckDB file.",
    )
    commands.add_parser(
        "validate",
        parents=[config],
        help="check the configuration and print it resolved, secrets redacted",
        description="Print the resolved configuration as YAML (secrets redacted) and exit 0, "
        "or list every problem on stderr and exit 2.",
    )
    commands.add_parser(
        "migrate",
        parents=[config, logs, database],
        help="apply pending schema migrations to the DuckDB file",
        description="Apply pending schema migrations to the DuckDB file, then exit.",
    )
    sql = commands.add_parser(
        "sql",
        parents=[config, logs, database],
        help="run a read-only SQL query over the spans, findings and traces views",
        description="Run one read-only SELECT over the views spans, findings and traces, bounded "
        "in rows and time; results go to stdout. Goes through the core's ExecuteSql RPC when a "
        "core answers on grpc.listen_addr, otherwise opens the DuckDB file read-only; with "
        "--database-path, always that file (a core may serve another one).",
    )
    sql.add_argument("query", metavar="QUERY", help="the SQL statement")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    sql.add_argument("--tenant", default="default", help="tenant whose rows the query sees")
    sql.add_argument("--max-rows", metavar="N", type=int, help="return at most N rows (sql.max_rows)")
    sql.add_argument(
        "--grpc-listen-addr",
        metavar="HOST:PORT",
        help="core to ask first (grpc.listen_addr); without one answering, the file is read directly",
    )
    return parser


_CONFIG_HELP = "YAML config file (default: $LLMTRACE_CONFIG, else built-in defaults)"


def _run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, dest, None) for dest, key in _FLAG_KEYS.items()}
    try:
        loaded = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        _print_issues("invalid configuration", exc.issues)
        return EXIT_CONFIG
    if args.command == "validate":
        return _validate(loaded)

    settings = loaded.settings
    configure_logging(settings.logging.level, settings.logging.format)
    log = structlog.get_logger("llmtrace.cli")
    for issue in loaded.warnings:
        log.warning("configuration key ignored", key=issue.path, reason=issue.message)

    if args.command == "core":
        from llmtrace.server import run_core  # noqa: PLC0415 - heavy import, only when serving

        return run_core(settings, ready_file=args.ready_file)
    if args.command in ("serve", "shim"):
        from llmtrace.supervisor import run_serve  # noqa: PLC0415 - heavy import, only when serving

        return run_serve(
            settings,
            with_core=args.command == "serve",
            ready_file=args.ready_file,
        )
    if args.command == "migrate":
        from llmtrace.store.database import DatabaseOpenError  # noqa: PLC0415
        from llmtrace.store.migrations import MigrationError, migrate_database  # noqa: PLC0415

        path = settings.storage.database_path
        os.umask(0o077)  # DuckDB creates the WAL (spans, the page-token key) at the first commit
        try:
            applied = migrate_database(path)
        except (DatabaseOpenError, MigrationError) as exc:
            log.error("migration failed", error=str(exc))
            return 1
        if applied:
            print(f"{path}: applied migrations {', '.join(str(v) for v in applied)}")
        else:
            print(f"{path}: already up to date")
        return EXIT_OK
    if args.command == "sql":
        from llmtrace.cli.sql_command import run_sql  # noqa: PLC0415

        return run_sql(
            settings,
            query=args.query,
            fmt=args.format,
            tenant=args.tenant,
            max_rows=args.max_rows,
            file_only=args.database_path is not None,
        )
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse only allows the above


def _validate(loaded: LoadedConfig) -> int:
    _print_issues("warning", loaded.warnings)
    source = loaded.source or "none (defaults, LLMTRACE_* environment and flags only)"
    sys.stdout.write(f"# config file: {source}\n")
    sys.stdout.write(yaml.safe_dump(redacted_dict(loaded.settings), sort_keys=False))
    return EXIT_OK


def _print_issues(title: str, issues: Iterable[ConfigIssue]) -> None:
    for issue in issues:
        print(f"llmtrace: {title}: {issue}", file=sys.stderr)


def _version() -> str:
    try:
        return importlib.metadata.version("llmtrace-server")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree, not installed
        return "0+unknown"


if __name__ == "__main__":
    sys.exit(main())
