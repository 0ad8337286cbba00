"""The stages of one shard task: how much each holds."""

from __future__ import annotations

from difaug.run.stages import stage_sizes


def test_stage_sizes_follow_the_batch_size() -> None:
    assert stage_sizes(8, 2) == stage_sizes(8, 2)
    sizes = stage_sizes(8, 2)
    assert (sizes.prepare_chunk, sizes.queue_depth) == (4, 16)
    assert stage_sizes(8, 10).prepare_chunk == 2  # at least two samples per chunk
    assert stage_sizes(1, 1).queue_depth == 2
