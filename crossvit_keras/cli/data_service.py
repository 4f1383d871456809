"""`crossvit-keras data-service`: a tf.data service dispatcher or worker (crossvit_keras.data.service)
that runs the training input pipeline of `crossvit-keras train --data-service grpc://HOST:PORT`.

    crossvit-keras data-service dispatcher --port 5050
    crossvit-keras data-service worker --dispatcher HOST:5050 --port 5051

A worker reads the training images itself: --data-path must name the same folder (or a copy at the
same path) on every worker machine. Both run until Ctrl-C (exit status 130).
"""

import argparse
import sys


def build_parser(prog="crossvit-keras data-service"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Start a tf.data service dispatcher or worker for `crossvit-keras train --data-service`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    roles = p.add_subparsers(dest="role", required=True, metavar="{dispatcher,worker}")
    d = roles.add_parser("dispatcher", help="the one dispatcher the trainers and workers connect to")
    d.add_argument("--port", type=int, default=5050)
    d.add_argument("--work-dir", help="keep the dispatcher's state here, to recover it on restart")
    w = roles.add_parser("worker", help="a worker that runs the input pipeline on this machine's CPUs")
    w.add_argument("--dispatcher", required=True, help="the dispatcher's HOST:PORT")
    w.add_argument("--port", type=int, default=5051)
    w.add_argument("--host", help="the name or address the trainers reach this worker at (default: hostname)")
    return p


def main(argv=None, prog="crossvit-keras data-service"):
    """Runs the command line; returns the process exit code (130 after Ctrl-C)."""
    from crossvit_keras.logs import setup_logging

    args = build_parser(prog).parse_args(argv)
    setup_logging()
    import tensorflow as tf

    from crossvit_keras.data import service

    try:
        if args.role == "dispatcher":
            server = service.start_dispatcher(args.port, args.work_dir)
            description = f"tf.data service dispatcher at {server.target}"
        else:
            server = service.start_worker(args.dispatcher, args.port, args.host)
            description = f"tf.data service worker on port {args.port or 'any free'} for {args.dispatcher}"
    except (ValueError, tf.errors.OpError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    service.serve(server, description)
    return 130
