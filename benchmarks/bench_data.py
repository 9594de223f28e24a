"""Data-loader throughput and memory: RLDS -> tf.data -> RLDSBatchTransform -> PaddedCollator.

    python benchmarks/bench_data.py [--data-root DIR] [--dataset libero_synthetic_bench] [--image-size 224]
        [--shuffle-buffer 10000] [--samples 512] [--batch-size 8] [--world-sizes 1,2]

Without --data-root a LIBERO-like synthetic dataset (256 px JPEGs, 2 cameras) is generated in a temp dir.
Each configuration (augmentation off / on) x world size W runs as W concurrent processes, one per rank (as
under torchrun), each with its own per-rank batch of --batch-size, i.e. a global batch of W x batch-size.
Every rank reads the whole (encoded) global stream and decodes only its own slice (pipeline.py), so the
per-rank numbers at W = 2 against W = 1 show what the shared stream costs. Rank r is pinned to its own
cores (--cpus-per-rank), as ranks on separate GPUs have their own CPUs, so the W = 1 process gets no more
CPU than each W = 2 rank. Each process's peak RSS is its own. Printed per configuration and rank:
    fill_s      time to the first sample (opening, statistics cache, filling the shuffle buffer)
    frames/s    raw tf.data frames (decode + resize [+ augment]), no torch
    samples/s   the full loader path: frames -> tokenised, normalised tensors -> collated batches
    per CPU-s   the same samples per CPU-second of the process (all threads): the cost per sample, robust to
                other load on a shared machine (wall-clock samples/s is not)
    base RSS    resident memory with torch + TensorFlow loaded, before any data
    1-pipeline  peak RSS after the raw-frame phase (one pipeline with a full shuffle buffer); minus base RSS
                = the pipeline's memory, mostly the shuffle buffer
    peak RSS    max resident memory of the process (the loader phase builds a second pipeline)
The model side is the real-size config (224 px, 2 images, chunk 8); the tokenizer is the tiny one
(no downloads), whose cost is negligible next to the images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(args: argparse.Namespace) -> dict:
    if args.cpus:  # before TF/torch start their thread pools (they size them from the affinity mask)
        os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])
    import torch

    import prismatic  # noqa: F401  (torch first)
    from prismatic.models.config import get_preset
    from prismatic.models.processing import VLAProcessor, build_tiny_tokenizer
    from prismatic.vla.datasets import PaddedCollator, RLDSBatchTransform, RLDSDataset

    torch.set_num_threads(args.torch_threads)
    config = get_preset("vla-adapter")
    config.vision.image_size = args.image_size
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = build_tiny_tokenizer(tok_dir)
    processor = VLAProcessor(tokenizer, args.image_size, config.num_images_in_input, config.num_action_queries)
    kwargs = dict(train=True, image_aug=args.aug, shuffle_buffer_size=args.shuffle_buffer, seed=0, rank=args.rank,
                  world_size=args.world_size, global_batch_size=args.batch_size * args.world_size)
    from prismatic.vla.datasets._tf import get_tf

    get_tf()
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; torch + TF loaded

    # Raw frames (tf.data only).
    t0 = time.perf_counter()
    frames = iter(RLDSDataset(args.data_root, args.dataset, None, config, **kwargs))
    next(frames)
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.samples):
        next(frames)
    frames_per_s = args.samples / (time.perf_counter() - t0)
    del frames
    pipeline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # one pipeline, full buffer

    # Full loader path.
    dataset = RLDSDataset(args.data_root, args.dataset, RLDSBatchTransform(processor), config, **kwargs)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                              collate_fn=PaddedCollator(processor), num_workers=0))
    next(loader)
    n_batches = max(args.samples // args.batch_size, 1)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for _ in range(n_batches):
        batch = next(loader)
    samples_per_s = n_batches * args.batch_size / (time.perf_counter() - t0)
    # CPU seconds of all the process's threads per sample: the cost, whatever else runs on the machine.
    cpu_samples_per_s = n_batches * args.batch_size / (_cpu_seconds() - cpu0)
    assert batch["pixel_values"].shape == (args.batch_size, 12, args.image_size, args.image_size)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"aug": args.aug, "world_size": args.world_size, "rank": args.rank, "fill_s": fill_s,
            "frames_per_s": frames_per_s, "samples_per_s": samples_per_s, "cpu_samples_per_s": cpu_samples_per_s,
            "base_rss_mb": base_rss_mb, "pipeline_rss_mb": pipeline_rss_mb, "peak_rss_mb": peak_rss_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None, help="data root holding the dataset (default: generate one)")
    parser.add_argument("--dataset", default="libero_synthetic_bench", help="dataset name")
    parser.add_argument("--image-size", type=int, default=224, help="model image size")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000, help="frame shuffle buffer size")
    parser.add_argument("--samples", type=int, default=512, help="samples timed per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for the batch transform (2+ thrashes on a loaded 2-core box)")
    parser.add_argument("--world-sizes", default="1,2",
                        help="comma-separated world sizes; each runs as that many concurrent rank processes")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure every configuration this many times (interleaved) and report the best")
    parser.add_argument("--aug", action="store_true", help=argparse.SUPPRESS)  # child-process flags
    parser.add_argument("--cpus-per-rank", type=int, default=None,
                        help="pin rank r to its own cores [r n, (r + 1) n), as ranks on separate GPUs have their own "
                             "CPUs (default: cpu_count // largest world size)")
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", default="", help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root is None:
            import prismatic  # noqa: F401
            from prismatic.vla.datasets.synthetic import ensure_synthetic_dataset

            args.data_root = tmp
            t0 = time.perf_counter()
            path = ensure_synthetic_dataset(tmp, name=args.dataset, num_tasks=4, episodes_per_task=5, image_size=256)
            print(f"generated {path} in {time.perf_counter() - t0:.1f}s")
        version_dir = max((Path(args.data_root) / args.dataset).glob("*.*.*"))
        size_mb = sum(p.stat().st_size for p in version_dir.glob("*.tfrecord*")) / 2**20
        print(f"dataset {args.dataset}: {size_mb:.1f} MiB of tfrecords in {version_dir}")
        runs = []
        world_sizes = [int(w) for w in args.world_sizes.split(",")]
        cpus_per_rank = args.cpus_per_rank or max(os.cpu_count() // max(world_sizes), 1)
        if cpus_per_rank * max(world_sizes) > os.cpu_count():
            raise ValueError(f"--cpus-per-rank {cpus_per_rank} x world size {max(world_sizes)} > {os.cpu_count()} CPUs")
        configs = [(aug, w) for aug in (False, True) for w in world_sizes]
        for aug, world_size in configs * args.repeats:  # interleaved: a load spike on a shared box hits all
            procs = []
            for rank in range(world_size):  # the ranks run concurrently, as under torchrun
                cmd = [sys.executable, __file__, "--child", "--data-root", args.data_root, "--dataset",
                       args.dataset, "--image-size", str(args.image_size), "--shuffle-buffer",
                       str(args.shuffle_buffer), "--samples", str(args.samples), "--batch-size",
                       str(args.batch_size), "--torch-threads", str(args.torch_threads), "--rank", str(rank),
                       "--world-size", str(world_size), "--cpus",
                       ",".join(str(c) for c in range(rank * cpus_per_rank, (rank + 1) * cpus_per_rank))
                       ] + (["--aug"] if aug else [])
                procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}))
            for proc in procs:
                stdout, stderr = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"benchmark child failed:\n{stderr[-3000:]}")
                runs.append(json.loads(stdout.strip().splitlines()[-1]))
    # Per (augmentation, world size, rank): the repeat with the best loader throughput (least disturbed).
    best: dict[tuple, dict] = {}
    for r in runs:
        key = (r["aug"], r["world_size"], r["rank"])
        if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
            best[key] = r
    results = [best[k] for k in sorted(best)]

    print(f"\nloader, 2 images at {args.image_size}px, shuffle buffer {args.shuffle_buffer} frames, "
          f"per-rank batch {args.batch_size}, {cpus_per_rank} CPU(s) per rank of {os.cpu_count()}, "
          f"{args.torch_threads} torch thread(s)")
    print(f"{'augmentation':<13} {'world':>5} {'rank':>4} {'fill_s':>7} {'frames/s':>9} {'samples/s':>10} "
          f"{'per CPU-s':>10} {'base RSS MiB':>13} {'1-pipeline MiB':>15} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{'on' if r['aug'] else 'off':<13} {r['world_size']:>5} {r['rank']:>4} {r['fill_s']:>7.1f} "
              f"{r['frames_per_s']:>9.1f} {r['samples_per_s']:>10.1f} {r['cpu_samples_per_s']:>10.1f} "
              f"{r['base_rss_mb']:>13.0f} {r['pipeline_rss_mb']:>15.0f} {r['peak_rss_mb']:>13.0f}")
    print("\nper-rank throughput (mean over ranks) relative to world size 1, same per-rank batch:")
    for aug in (False, True):
        for key, label in (("samples_per_s", "samples/s"), ("cpu_samples_per_s", "samples per CPU-s")):
            mean = {w: sum(r[key] for r in results if r["aug"] == aug and r["world_size"] == w) / w
                    for w in world_sizes}
            print(f"  augmentation {'on ' if aug else 'off'}, {label:<17}: " + ", ".join(
                f"W={w}: {mean[w]:.1f} ({mean[w] / mean[world_sizes[0]]:.2f}x)" for w in world_sizes))

if __name__ == "__main__":
    main()
