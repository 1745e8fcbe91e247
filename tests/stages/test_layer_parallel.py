"""The layer-parallel stages' shared part."""

from tm_distill.stages.layer_parallel import head_chunk_size


def test_head_chunk_size_bounds():
    assert head_chunk_size(1, 128, 9, 2**40) == 9
    assert head_chunk_size(2, 2048, 32, 2**28) == 1
    assert head_chunk_size(1, 256, 32, 8 * 4 * 256 * 256 * 5) == 5
