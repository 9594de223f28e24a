"""A damaged tfrecord shard (truncated download, flipped bits): the error names the file and says what to do."""

from __future__ import annotations

import re

import pytest

from tests.data.common import DATASET, make_dataset, take


def _shard(root):
    return sorted((root / DATASET / "1.0.0").glob("*.tfrecord*"))[1]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,kind", [(_truncate, "truncated"), (_flip, "corrupted")])
def test_damaged_shard_while_indexing_is_named(fresh_data_root, model_config, damage, kind):
    shard = _shard(fresh_data_root)
    damage(shard)
    with pytest.raises(ValueError, match=rf"damaged dataset file: {re.escape(str(shard))}: .*{kind} record.*"
                                         r"re-download the dataset, or regenerate it"):
        make_dataset(fresh_data_root, model_config)


def test_damaged_shard_while_streaming_is_named(fresh_data_root, model_config):
    dataset = make_dataset(fresh_data_root, model_config)  # the index is built (and cached) from intact files
    shard = _shard(fresh_data_root)
    _truncate(shard)
    with pytest.raises(ValueError, match=rf"damaged dataset file: {re.escape(str(shard))}: .*truncated record"):
        take(dataset, 10_000)
