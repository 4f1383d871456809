"""tf.data service: the training input pipeline runs on other machines' CPUs when the training
hosts' cannot keep up. A dispatcher hands the pipeline to the workers; each worker runs it and
streams batches to the trainers.

    crossvit-keras data-service dispatcher --port 5050                    # on one machine
    crossvit-keras data-service worker --dispatcher HOST:5050 --port 5051  # on each CPU machine
    crossvit-keras train ... --data-service grpc://HOST:5050

The processing mode is "parallel_epochs": every worker runs the whole pipeline (its own shuffle of
all files, its own augmentation) and the trainers, which share one job by its name, each take
whole batches from them, each batch by one trainer only. It works with every source and transform
("distributed_epoch" needs splittable sources and asks the dispatcher for every file name of an
image folder), and training reads an endless stream, so no exact epoch boundary is lost. For the
workers' streams to differ, the pipeline is built without fixed seeds (`unseeded`): with a seed,
every worker would produce the same images with the same augmentation.
"""

import contextlib
import logging
import socket
import time

import tensorflow as tf

logger = logging.getLogger(__name__)

PROCESSING_MODE = "parallel_epochs"
PROTOCOL = "grpc"


def service_address(address):
    """HOST:PORT or grpc://HOST:PORT -> grpc://HOST:PORT; anything else is a ValueError."""
    rest = address.split("://", 1)[1] if "://" in address else address
    protocol = address.split("://", 1)[0] if "://" in address else PROTOCOL
    host, _, port = rest.rpartition(":")
    if protocol != PROTOCOL or not host or not port.isdigit():
        raise ValueError(f"--data-service {address!r}: give the dispatcher as grpc://HOST:PORT.")
    return f"{PROTOCOL}://{host}:{port}"


def distribute(dataset, address, job_name):
    """`dataset`, run by the tf.data service at `address` (grpc://HOST:PORT) in job `job_name`:
    the trainers that use the same job name share the workers' output, each element once."""
    return dataset.apply(
        tf.data.experimental.service.distribute(
            processing_mode=PROCESSING_MODE, service=service_address(address), job_name=job_name
        )
    )


@contextlib.contextmanager
def unseeded(restore_seed=None):
    """Builds a tf.data pipeline without TensorFlow's global seed (each tf.data service worker then
    draws its own random numbers), setting `restore_seed` again afterwards."""
    tf.random.set_seed(None)
    try:
        yield
    finally:
        if restore_seed is not None:
            tf.random.set_seed(restore_seed)


def start_dispatcher(port=0, work_dir=None):
    """A tf.data service dispatcher on `port` (0: any free port); with `work_dir` it keeps its
    state there and recovers it on restart."""
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, protocol=PROTOCOL, work_dir=work_dir, fault_tolerant_mode=bool(work_dir)
    )
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher, port=0, host=None):
    """A tf.data service worker on `port` that registers with `dispatcher` (HOST:PORT) and tells
    the trainers to reach it at `host` (default: this machine's name)."""
    dispatcher = service_address(dispatcher).split("://", 1)[1]
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher,
        worker_address=f"{host or socket.gethostname()}:%port%",
        port=port,
        protocol=PROTOCOL,
    )
    return tf.data.experimental.service.WorkerServer(config)


def serve(server, description):
    """Logs one line and blocks until Ctrl-C (the server runs in TensorFlow's threads; a Python
    sleep, unlike server.join(), wakes up for the signal)."""
    logger.info("%s; Ctrl-C stops it", description)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopped")
