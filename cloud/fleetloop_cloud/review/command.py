"""``fleetloop-cloud review serve [--host 127.0.0.1] [--port 8080] [--config config/cloud.yaml]``.

Registered as the entry point ``review-page`` (group ``fleetloop_cloud.commands``). The loop's
``review`` step owns the ``review`` sub-command; this plugin adds the ``serve`` action to it
(``fleetloop-cloud review`` alone still runs the step), or creates ``review`` when the step is
not installed.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``review serve`` to the CLI."""
    review = subparsers.choices.get("review")
    if review is None:
        review = subparsers.add_parser("review", help="human review")
        review.set_defaults(handler=lambda args: review.print_help() or 2)
    actions = review.add_subparsers(dest="review_action", metavar="ACTION", required=False)
    serve = actions.add_parser("serve", help="serve the human review and tuning page (the review-page annotator)")
    serve.add_argument(
        "--host",
        default=None,
        help="bind address (default from config/review_page.yaml: 127.0.0.1; any other address requires a token)",
    )
    serve.add_argument("--port", type=int, default=None, help="port (default from config/review_page.yaml: 8080)")
    serve.add_argument("--config", default=None, help="config/cloud.yaml (default: the shipped one)")
    serve.add_argument("--page-config", default=None, help="config/review_page.yaml (default: the shipped one)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fleetloop_cloud.config import load_cloud_config
    from fleetloop_cloud.pool_sql import redact
    from fleetloop_cloud.review.app import create_app
    from fleetloop_cloud.review.security import TOKEN_ENV, resolve_token
    from fleetloop_cloud.review.settings import load_review_page_config

    config = load_cloud_config(args.config)
    settings = load_review_page_config(args.page_config)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    token, generated = resolve_token(host, settings.token)
    pool_target = config.pool_target
    app = create_app(pool_target, config, token, settings=settings, config_path=args.config)
    shown_host = f"[{host}]" if ":" in host else host
    shown_pool = redact(pool_target) if isinstance(pool_target, str) else pool_target
    print(f"review page for {shown_pool}: http://{shown_host}:{port}/label", flush=True)
    if token is not None:
        if generated:
            print(
                f"token (printed once; set {TOKEN_ENV} or token: in config/review_page.yaml to fix it): {token}",
                flush=True,
            )
            print(f"sign in: http://{shown_host}:{port}/login?token={token}", flush=True)
        else:
            print("a token is required (from config or the environment)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(2)
