"""otlib._shapes.broadcast_shapes: torch.broadcast_shapes's results and errors, without its host cost."""

import pytest
import torch

from otlib._shapes import broadcast_shapes

CASES = [
    ((), ()),
    ((8, 6), (8, 6)),
    ((8, 6), (1, 6)),
    ((8, 1), (6,)),
    ((2, 1, 4), (3, 1)),
    ((5,), ()),
    ((0, 3), (1, 3)),
    ((1,), (0,)),
    ((2, 3), (4, 2, 3), (1, 1, 3)),
]


@pytest.mark.parametrize("shapes", CASES)
def test_same_result_as_torch(shapes):
    assert broadcast_shapes(*shapes) == tuple(torch.broadcast_shapes(*shapes))
    assert broadcast_shapes(*(torch.Size(s) for s in shapes)) == tuple(torch.broadcast_shapes(*shapes))


@pytest.mark.parametrize("shapes", [((8, 6), (8, 3)), ((2,), (3,)), ((0,), (2,))])
def test_shapes_that_do_not_broadcast_raise_as_torch_does(shapes):
    with pytest.raises(RuntimeError):
        torch.broadcast_shapes(*shapes)
    with pytest.raises(RuntimeError, match="do not broadcast"):
        broadcast_shapes(*shapes)
