"""``fleetloop-cloud ingest|autolabel|review|train|evaluate|register|round --config config/cloud.yaml``.

Each sub-command is registered through the ``fleetloop_cloud.commands`` entry-point group
(cloud/setup.py) and runs one step of the open round (:class:`fleetloop_cloud.loop.CloudLoop`);
every step is idempotent, so rerunning a finished one does nothing. ``train --sagemaker`` is the
SageMaker training-container entry point (docker/sagemaker-entrypoint.sh).
"""

from __future__ import annotations

import argparse
import json
import sys

# the loop (numpy, scipy, onnxruntime, ...) is imported by the handlers, not at registration:
# every image that runs `fleetloop-cloud <command>` loads every command's module


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="config/cloud.yaml (default: the shipped one)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _loop(args):
    # the models' task picks the loop's task part (classifiers or detectors)
    from fleetloop_cloud.loop import open_loop

    return open_loop(args.config, progress=not args.no_progress)


def _print(args, title: str, data: dict) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(str(key), text if len(text) < 400 else text[:400] + " ...")
    Console().print(table)


def _step_command(name: str, help_text: str):
    def handler(args) -> int:
        with _loop(args) as loop:
            result = loop.run_step(name)
            round_number = loop.current_round()
        _print(args, f"{name} (round {round_number})", result)
        return 0

    def register(subparsers) -> None:
        parser = subparsers.add_parser(name, help=help_text)
        _common(parser)
        parser.set_defaults(handler=handler)

    return register


register_ingest = _step_command("ingest", "read new frames + sidecars from the store into the pool")
register_autolabel = _step_command("autolabel", "T1 and T2 predict every frame they have not seen")
register_review = _step_command("review", "calibration sample, routing, propagation, human review, QA audit")
register_evaluate = _step_command("evaluate", "candidates vs production on the held-out field test set (the gate)")
register_register = _step_command("register", "signed packages to the registry, approved where the gate passed")


def register_train(subparsers) -> None:
    """``train``: the round's training step, or with ``--sagemaker`` the training-container entry point."""
    parser = subparsers.add_parser("train", help="train T2, distil T3/T4, INT8 (or --sagemaker: the job's entry point)")
    _common(parser)
    parser.add_argument(
        "--sagemaker",
        action="store_true",
        help="run as the SageMaker training job (reads /opt/ml/... or the --model-dir/--train... "
        "arguments that follow)",
    )
    parser.add_argument("contract_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def handler(args) -> int:
        if args.sagemaker:
            from fleetloop_cloud.train import main_contract

            return main_contract(args.contract_args)
        with _loop(args) as loop:
            result = loop.train()
            round_number = loop.current_round()
        _print(args, f"train (round {round_number})", result)
        return 0

    parser.set_defaults(handler=handler)


def register_round(subparsers) -> None:
    """``round``: every remaining step of the open round, then the summary."""
    parser = subparsers.add_parser("round", help="run the open round's remaining steps and print its summary")
    _common(parser)

    def handler(args) -> int:
        with _loop(args) as loop:
            summary = loop.run_round()
            if args.json:
                print(json.dumps(summary.to_dict(), indent=2, sort_keys=True, default=str))
            else:
                from rich.console import Console

                Console().print(loop.task.summary_table(summary))
        return 0 if summary.status in ("finished", "waiting", "running") else 1  # running: in another worker

    parser.set_defaults(handler=handler)


def register_manifest(subparsers) -> None:
    """``manifest``: a SageMaker Ground Truth augmented manifest (JSON Lines) of any subset of the pool."""
    parser = subparsers.add_parser("manifest", help="write a Ground Truth augmented manifest of pool frames")
    _common(parser)
    parser.add_argument("--state", nargs="+", default=None, help="only frames in these states (default: all)")
    parser.add_argument(
        "--source",
        choices=("human", "auto", "propagated"),
        default=None,
        help="only frames whose label came from this source",
    )
    parser.add_argument("--round", type=int, default=None, help="only frames ingested in this round")
    parser.add_argument("--out", default=None, help="write the JSON Lines here")
    parser.add_argument(
        "--store-key", default=None, help="also put it into the store under this key (S3 for Ground Truth)"
    )

    def handler(args) -> int:
        from fleetloop_cloud.ingest import augmented_manifest, write_jsonl

        with _loop(args) as loop:
            rows = loop.pool.frames(state=args.state, round=args.round)
            ids = [r["id"] for r in rows]
            if args.source:
                labels = loop.task.answers.labels(ids, source=args.source)
                ids = [i for i in ids if i in labels]
            if loop.task.name == "detection":  # bounding-box manifests
                from fleetloop_cloud.box_manifest import augmented_box_manifest

                records = augmented_box_manifest(
                    loop.pool,
                    loop.task.answers,
                    loop.store,
                    ids,
                    loop.task.classes,
                    job_name=f"fleetloop-round-{loop.pool.last_round()}",
                )
            else:
                records = augmented_manifest(
                    loop.pool, loop.store, ids, labels=loop.labels, job_name=f"fleetloop-round-{loop.pool.last_round()}"
                )
            text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
            if args.out:
                write_jsonl(records, args.out)
            if args.store_key:
                loop.store.put_bytes(args.store_key, text.encode())
            if not args.out and not args.store_key:
                sys.stdout.write(text)
            else:
                print(
                    f"{len(records)} frames -> {args.out or ''} "
                    f"{loop.store.url(args.store_key) if args.store_key else ''}"
                )
        return 0

    parser.set_defaults(handler=handler)


def register_serve(subparsers) -> None:
    """``serve``: the teacher inference container's server (``docker run IMAGE serve``)."""
    import os

    parser = subparsers.add_parser("serve", help="serve a teacher package on the SageMaker inference contract")
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")))

    def handler(args) -> int:
        import uvicorn

        from fleetloop_cloud.serve import create_app

        uvicorn.run(create_app(args.model_dir), host=args.host, port=args.port, log_level="info")
        return 0

    parser.set_defaults(handler=handler)
