"""tf.distribute for the recipe: the strategy for --strategy, logical CPU devices for tests, and
the jit_compile / steps_per_execution settings each strategy can take."""

import json
import logging
import os

from crossvit_keras.logs import first_line

logger = logging.getLogger(__name__)

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def configure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (for MirroredStrategy tests); TensorFlow must
    not have started its devices yet."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ValueError(
            "--cpu-devices must be set before TensorFlow initialises its devices (at the start of the process)."
        ) from None


def make_strategy(name, tpu=""):
    """The tf.distribute strategy for --strategy; `mirrored` spans every GPU, or with none every
    logical CPU device; `multi_worker_mirrored` reads its cluster from TF_CONFIG."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker_mirrored":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError(
                "--strategy multi_worker_mirrored needs TF_CONFIG in the environment, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}.'
            )
        try:
            json.loads(config)
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}.") from None
        from crossvit_keras.training import compat

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        compat.apply_multi_worker_fixes()
        return strategy
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            first = first_line(error)
            raise ValueError(f"--strategy tpu: no TPU reachable (--tpu {tpu!r}): {first}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown --strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def is_chief(strategy):
    """Whether this process writes the shared artefacts (every process but multi-worker non-chiefs)."""
    return bool(strategy.extended.should_checkpoint)


def worker_index(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0


def replicas_are_gpus(strategy):
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy has no replica devices of its own
        return False
    return bool(devices) and all("GPU" in device.upper() for device in devices)


def distribution_settings(jit_compile, steps_per_execution, strategy):
    """jit_compile and steps_per_execution for the strategy. Under MirroredStrategy and
    MultiWorkerMirroredStrategy, XLA compiles each replica's step (crossvit_keras.training.compat.split_xla_steps)
    and `--jit-compile auto` is on when the replicas are GPUs (as Keras' "auto" is on one GPU), off
    on CPUs; steps_per_execution > 1 is turned off there (model.fit fails with it in Keras 3.15)."""
    import tensorflow as tf

    jit = {"auto": "auto", "on": True, "off": False}[jit_compile]
    steps = steps_per_execution
    if isinstance(strategy, tf.distribute.MirroredStrategy | tf.distribute.MultiWorkerMirroredStrategy):
        name = type(strategy).__name__
        if jit == "auto":
            jit = replicas_are_gpus(strategy)
            logger.info("jit_compile %s under %s (auto: on when the replicas are GPUs)", "on" if jit else "off", name)
        if steps > 1:
            logger.info("steps_per_execution %d -> 1 under %s (model.fit fails there with Keras 3.15)", steps, name)
            steps = 1
    return jit, steps


def describe_strategy(strategy):
    try:
        devices = ", ".join(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: TensorFlow's own device placement
        return "default strategy, one replica"
    workers = getattr(getattr(strategy, "cluster_resolver", None), "cluster_spec", lambda: None)()
    count = len(workers.job_tasks("worker")) if workers and "worker" in workers.jobs else 1
    return f"{type(strategy).__name__} over {devices}" + (f" on each of {count} workers" if count > 1 else "")
