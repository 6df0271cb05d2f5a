"""`python -m tools.fake_upstream --port N`: serve the fake upstream standalone."""

from __future__ import annotations

import argparse

from aiohttp import web

from tools.fake_upstream.app import create_app
from tools.fake_upstream.config import FakeUpstreamConfig


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m tools.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without credentials")
    parser.add_argument(
        "--keep-requests", type=int, default=1000, help="recorded requests kept in memory (the newest)"
    )
    args = parser.parse_args(argv)
    config = FakeUpstreamConfig(
        chunk_delay_s=args.chunk_delay, require_auth=not args.no_auth, keep_requests=args.keep_requests
    )
    web.run_app(create_app(config), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
