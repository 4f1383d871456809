"""Where the time of one CrossViT forward or training step goes, by TensorFlow op type.

    python tools/profile_ops.py --task predict            # forward of --batch-size 32 images
    python tools/profile_ops.py --task fit --batch-size 16 # one train_on_batch with the recipe
    python tools/profile_ops.py --task fit --by-layer      # grouped by part of the model instead

Runs TensorFlow's profiler over one step after a warm-up and sums the kernel times of each op type
(or group of ops: matmuls, LayerNorm, GELU, attention, optimizer) on TensorFlow's compute threads.
`--inter-op-threads 1` (the default) runs one op at a time, so that the times add up to the step,
as torch's profiler reports timm's. A development tool: it is not a test and not a benchmark (see
`python benchmarks/speed.py` for speeds).
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def layer_group(node, op):
    """The part of the model a profiled node belongs to, from its name scope and op type."""
    if "MatMul" in op and "Batch" not in op:
        return "matmuls (Dense layers)"
    if "adam_w" in node or "Assign" in op:
        return "optimizer"
    if re.search(r"/norm\w*/", node):  # norm1, norm2, the projections' norm, the heads' norm_0 / norm_1
        return "LayerNorm"
    if "/mlp" in node:
        return "MLP besides its matmuls (GELU, dropout)"
    if "/attn" in node:
        return f"attention besides its Dense layers: {op}"
    return f"other: {op}"


def op_times(logdir):
    """{(node name, op type): seconds} summed over the TensorFlow compute threads of the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                node, _, op = name.rpartition(":")  # "scope/node:OpType"
                if node and op != "Process":  # not the executor's own events
                    times[(node, op)] += event.duration_ps / 1e12
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="crossvit_15_240")
    parser.add_argument("--task", choices=("predict", "fit"), default="predict")
    parser.add_argument("--batch-size", type=int, help="default 32 for predict, 16 for fit")
    parser.add_argument("--dtype", default="float32", help="float32 or mixed_bfloat16")
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--by-layer", action="store_true", help="group by part of the model, not op type")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    import crossvit_keras
    from benchmarks import common  # benchmarks/common.py: the speed benchmark's recipe and inputs

    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    batch = args.batch_size or (32 if args.task == "predict" else 16)
    train = args.task == "fit"
    model = crossvit_keras.create_model(
        args.model, dtype=args.dtype, **({"drop_path_rate": common.RECIPE["drop_path_rate"]} if train else {})
    )
    images = common.random_images(np, batch, model.image_size)
    if train:
        common.compile_for_training(model, jit_compile=False)
        labels = common.one_hot_labels(np, batch, model.num_classes)

        def step():
            model.train_on_batch(images, labels)
    else:
        forward = tf.function(lambda x: model(x, training=False))

        def step():
            forward(images).numpy()

    for _ in range(2):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        tf.profiler.experimental.start(logdir)
        step()
        tf.profiler.experimental.stop()
        seconds = time.perf_counter() - start
        times = op_times(logdir)
    groups, counts = collections.Counter(), collections.Counter()
    for (node, op), value in times.items():
        key = layer_group(node, op) if args.by_layer else op
        groups[key] += value
        counts[key] += 1
    print(f"{args.model} {args.task} batch {batch} {args.dtype}: one step {seconds:.2f} s under the profiler")
    print(f"kernel time {sum(groups.values()):.3f} s over {args.inter_op_threads} inter-op thread(s)\n")
    print("| seconds | nodes | " + ("part" if args.by_layer else "op type") + " |\n|---:|---:|---|")
    for key, value in groups.most_common(args.top):
        print(f"| {value:.3f} | {counts[key]} | {key} |")


if __name__ == "__main__":
    main()
