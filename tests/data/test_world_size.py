"""World-size invariance of the frame stream: the ranks' slices, put back together, are the 1-process stream.

The reference is the single-process stream (world_size 1) itself; the reassembly below is the plain rule
"global batch t = rank 0's t-th block of b frames, then rank 1's, ...". Same frames, same order, same
augmented pixels (augmentation on everywhere: its seeds must not depend on the rank).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.data.common import DATASET, make_dataset, take

TRAIN = dict(train=True, image_aug=True, shuffle_buffer_size=50, seed=3)


def _reassemble(rank_streams: list[list[dict]], rank_batch: int) -> list[dict]:
    out = []
    for t in range(min(len(s) for s in rank_streams) // rank_batch):
        for stream in rank_streams:
            out += stream[t * rank_batch: (t + 1) * rank_batch]
    return out


def _assert_same_frames(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"frame {i}: {key}")


@pytest.mark.parametrize("world_size,global_batch", [(2, 4), (3, 3)])
def test_rank_slices_reassemble_the_single_process_stream(data_root, model_config, world_size, global_batch):
    rank_batch = global_batch // world_size
    frames_per_rank = 4 * rank_batch  # 4 global batches
    ranks = [take(make_dataset(data_root, model_config, rank=r, world_size=world_size,
                               global_batch_size=global_batch, **TRAIN), frames_per_rank)
             for r in range(world_size)]
    for r, frames in enumerate(ranks):  # rank r holds frames [t B + r b, t B + (r + 1) b) of global batch t
        expected = [t * global_batch + r * rank_batch + i for t in range(4) for i in range(rank_batch)]
        assert [int(f["sample_index"]) for f in frames] == expected
    single = take(make_dataset(data_root, model_config, global_batch_size=global_batch, **TRAIN),
                  world_size * frames_per_rank)
    _assert_same_frames(_reassemble(ranks, rank_batch), single)


def test_resume_on_another_world_size_continues_the_global_stream(data_root, model_config):
    """skip_samples counts global frames: 2 ranks skipping 8 continue the 1-process stream at frame 8."""
    single = take(make_dataset(data_root, model_config, **TRAIN), 24)
    ranks = [take(make_dataset(data_root, model_config, rank=r, world_size=2, global_batch_size=4, skip_samples=8,
                               **TRAIN), 8) for r in range(2)]
    _assert_same_frames(_reassemble(ranks, 2), single[8:])


def test_mixture_and_val_streams_are_world_size_invariant(data_root, model_config, tmp_path, monkeypatch):
    from prismatic.vla.datasets import registry

    root = tmp_path / "mix"
    for name in ("libero_synthetic_a", "libero_synthetic_b"):
        shutil.copytree(data_root / DATASET, root / name)
    monkeypatch.setitem(registry.MIXTURE_REGISTRY, "synthetic_mix", (("libero_synthetic_a", 1.0),
                                                                      ("libero_synthetic_b", 3.0)))
    # Train: the weighted mixture sampling is global too.
    single = take(make_dataset(root, model_config, name="synthetic_mix", **TRAIN), 40)
    ranks = [take(make_dataset(root, model_config, name="synthetic_mix", rank=r, world_size=2, global_batch_size=4,
                               **TRAIN), 20) for r in range(2)]
    _assert_same_frames(_reassemble(ranks, 2), single)
    assert {f["dataset_name"] for f in single} == {b"libero_synthetic_a", b"libero_synthetic_b"}
    # Val: one finite, ordered pass, split between the ranks; together they hold every frame once.
    val = dict(name="synthetic_mix", train=False, val_fraction=0.25)
    single_val = list(make_dataset(root, model_config, **val))
    rank_val = [list(make_dataset(root, model_config, rank=r, world_size=2, **val)) for r in range(2)]
    assert abs(len(rank_val[0]) - len(rank_val[1])) <= 1
    merged = sorted(rank_val[0] + rank_val[1], key=lambda f: int(f["sample_index"]))
    _assert_same_frames(merged, single_val)


def test_a_rank_decodes_only_its_own_frames(data_root, model_config, monkeypatch):
    """The shard filter runs on encoded frames: image work is never spent on another rank's frames."""
    from prismatic.vla.datasets import pipeline
    from prismatic.vla.datasets._tf import get_tf

    tf = get_tf()
    decoded: list[int] = []
    real = pipeline.load_frame_images

    def recording(frame, config):
        def record(k):
            decoded.append(int(k))
            return k

        k = tf.py_function(record, [frame["sample_index"]], tf.int64)
        k.set_shape([])
        return real({**frame, "sample_index": k}, config)

    monkeypatch.setattr(pipeline, "load_frame_images", recording)
    frames = take(make_dataset(data_root, model_config, rank=1, world_size=2, global_batch_size=6, **TRAIN), 15)
    assert [int(f["sample_index"]) for f in frames][:6] == [3, 4, 5, 9, 10, 11]
    assert len(decoded) >= 15
    assert all((k // 3) % 2 == 1 for k in decoded), sorted(decoded)[:20]
