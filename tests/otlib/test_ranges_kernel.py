"""The device fold of range statistics (otlib.kernels.ranges; interpreted on CPU, compiled on a GPU machine)
against the torch path it replaces: torch.aminmax, then bounds.mul_(β).add_(stats, alpha=1 − β). Bit-exact."""

import math

import pytest
import torch
from helpers import assert_equal_verbose

pytest.importorskip("triton", reason="Triton is not installed")

from otlib.kernels.ranges import dense_flat, minmax_fold_, pair_fold_
from otlib.ops.ranges import RangeFold
from otlib.ops.softmax import fused_softmax

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BETA = 0.9


def _state():
    scratch = torch.tensor([math.inf, -math.inf], device=DEVICE)
    return scratch, torch.zeros(2, dtype=torch.int32, device=DEVICE)


def _torch_update(row: torch.Tensor, stats: torch.Tensor, first: bool) -> torch.Tensor:
    out = row.clone()
    if first:
        return out.copy_(stats)
    return out.mul_(BETA).add_(stats, alpha=1.0 - BETA)


def _aminmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(x)
    return torch.stack([lo, hi]).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5), (97, 131), (4, 37, 41), (70001,)])
def test_fold_equals_aminmax_then_ema(dtype, shape):
    scratch, ticket = _state()
    row = torch.zeros(2, device=DEVICE)
    expected = row.clone()
    for step in range(3):  # set, then two EMA steps with fresh batches
        x = (torch.randn(shape, device=DEVICE) * (step + 1) + step).to(dtype)
        expected = _torch_update(expected, _aminmax(x), first=step == 0)
        minmax_fold_(x, row, scratch, ticket, BETA, first=step == 0)
        assert_equal_verbose(row, expected, f"step {step}")
        assert scratch.tolist() == [math.inf, -math.inf] and ticket.tolist() == [0, 0], "state not reset"


def test_fold_reads_transposed_and_sliced_tensors():
    base = torch.randn(6, 40, 24, device=DEVICE)
    for view in (base.transpose(1, 2), base.permute(2, 0, 1), base[:, 3:17]):
        scratch, ticket = _state()
        row = torch.zeros(2, device=DEVICE)
        minmax_fold_(view, row, scratch, ticket, BETA, first=True)
        assert_equal_verbose(row, _aminmax(view))
    assert dense_flat(base.transpose(1, 2)).data_ptr() == base.data_ptr()  # a permutation is read in place
    assert dense_flat(base[:, 3:17]).is_contiguous()  # a slice with gaps is copied


def test_fold_propagates_nan_and_inf():
    x = torch.randn(5000, device=DEVICE)
    x[1234] = math.inf
    scratch, ticket = _state()
    row = torch.zeros(2, device=DEVICE)
    minmax_fold_(x, row, scratch, ticket, BETA, first=True)
    assert row[1].item() == math.inf and row[0].item() == x.min().item()
    x[4321] = math.nan
    minmax_fold_(x, row, scratch, ticket, BETA, first=False)
    assert torch.isnan(row).all(), "NaN in the batch must reach both bounds, as torch.aminmax"
    assert scratch.tolist() == [math.inf, -math.inf] and ticket.tolist() == [0, 0]


def test_fold_refuses_an_empty_tensor():
    scratch, ticket = _state()
    row = torch.tensor([-1.0, 1.0], device=DEVICE)
    with pytest.raises(ValueError, match="empty tensor"):
        minmax_fold_(torch.empty(0, 8, device=DEVICE), row, scratch, ticket, BETA, first=False)
    assert row.tolist() == [-1.0, 1.0]


def test_pair_fold_equals_stack_then_ema():
    row = torch.tensor([-1.7, 2.3], device=DEVICE)
    for first in (True, False, False):
        lo, hi = torch.randn((), device=DEVICE) - 3, torch.randn((), device=DEVICE) + 3
        expected = _torch_update(row, torch.stack([lo, hi]), first)
        pair_fold_(lo, hi, row, BETA, first)
        assert_equal_verbose(row, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_folds_the_range_of_the_probabilities_it_returns(dtype):
    scores = (torch.randn(2, 3, 37, 37, device=DEVICE) * 4).to(dtype)
    allowed = torch.ones(37, 37, device=DEVICE, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, 37, 37, device=DEVICE).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    for masked in (False, True):  # without a mask P's minimum is positive; with the causal mask it is 0
        bounds = torch.tensor([[0.0, 1.0], [5.0, 6.0]], device=DEVICE)
        scratch = torch.tensor([[math.inf, -math.inf]] * 2, device=DEVICE)
        tickets = torch.zeros(2, 2, dtype=torch.int32, device=DEVICE)
        p = fused_softmax(
            scores, mask if masked else None, 0.125, dtype, RangeFold(bounds, scratch, tickets, 0, BETA, False)
        )
        assert_equal_verbose(bounds[0], _torch_update(torch.tensor([0.0, 1.0], device=DEVICE), _aminmax(p), False))
        assert bounds[1].tolist() == [5.0, 6.0]
    scores[1, 2, 5, 7] = float("nan")  # one NaN score: its row of P is NaN, and so is the range
    bounds = torch.tensor([[0.0, 1.0]], device=DEVICE)
    scratch = torch.tensor([[math.inf, -math.inf]], device=DEVICE)
    tickets = torch.zeros(1, 2, dtype=torch.int32, device=DEVICE)
    fused_softmax(scores, mask, 0.125, dtype, RangeFold(bounds, scratch, tickets, 0, BETA, False))
    assert torch.isnan(bounds).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tracker_fold_on_cuda_equals_the_torch_path():
    from otlib.layers import RangeTracker
    from otlib.ops import force_reference

    folded, plain = (RangeTracker(("x", "w", "out"), BETA, device="cuda") for _ in range(2))
    for step in range(3):
        x, w = torch.randn(64, 96, device="cuda").t() * (step + 1), torch.randn(48, 96, device="cuda")
        acc = x.t() @ w.t()
        lo, hi = acc.min(), acc.max()
        folded.observe({0: x, 1: w}, training=True)
        folded.update_pair(2, lo, hi)
        with force_reference():
            plain.observe({0: x, 1: w}, training=True)
            plain.update_pair(2, lo, hi)
        assert_equal_verbose(folded.bounds, plain.bounds, f"step {step}")
        assert folded.initialised.all() and folded._initialised_host == [True] * 3


def test_tracker_fold_compiles_to_the_mutating_custom_ops(monkeypatch):
    """Under torch.compile the folds are the custom ops otlib::minmax_fold / otlib::pair_fold (traced through
    AOTAutograd's functionalisation with aot_eager); here the kernels run interpreted on CPU tensors."""
    import otlib.layers.ranges as ranges_module
    from otlib.layers import RangeTracker

    monkeypatch.setattr(ranges_module, "use_kernels", lambda t, levels=2: True)  # the CUDA path, on any device
    tracker = RangeTracker(("x", "w", "out"), BETA, device=DEVICE)

    def step(x, w, lo, hi):
        tracker.observe({0: x, 1: w}, training=True)
        tracker.update_pair(2, lo, hi)
        return tracker.bounds * 1.0

    expected = torch.zeros(3, 2, device=DEVICE)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for i in range(3):  # step 0 sets the rows (eager: the host mirror flips), then two compiled EMA steps
        x, w = torch.randn(40, 24, device=DEVICE) * (i + 1), torch.randn(16, 24, device=DEVICE)
        lo, hi = torch.randn((), device=DEVICE) - 2, torch.randn((), device=DEVICE) + 2
        for row, stats in enumerate((_aminmax(x), _aminmax(w), torch.stack([lo, hi]))):
            expected[row] = _torch_update(expected[row], stats, first=i == 0)
        got = (step if i == 0 else compiled)(x, w, lo, hi)
        assert_equal_verbose(got, expected, f"step {i}")
        assert_equal_verbose(tracker.bounds, expected, f"step {i} (buffer)")


@pytest.mark.parametrize("first", [(True, True), (False, True), (False, False)])
def test_two_folds_and_the_counter_in_one_launch_equal_the_single_folds(first):
    """A product's two operands (different sizes and dtypes, rows in different states) folded in one launch, with
    its call counter advanced in it: the same rows as two single folds, each row's state reset, the counter + 1."""
    x = (torch.randn(33, 70, device=DEVICE) * 3).bfloat16()  # an activation and a weight: two program shares
    w = torch.randn(5000, device=DEVICE) - 1
    bounds = torch.tensor([[-1.0, 2.0], [-0.5, 0.25], [7.0, 8.0]], device=DEVICE)
    scratch = torch.tensor([[math.inf, -math.inf]] * 3, device=DEVICE)
    tickets = torch.zeros(3, 2, dtype=torch.int32, device=DEVICE)
    rng = torch.tensor([5, 41, 3], device=DEVICE)
    expected = bounds.clone()
    for row, (t, row_first) in enumerate(zip((x, w), first, strict=True)):
        expected[row] = _torch_update(bounds[row], _aminmax(t), row_first)
    minmax_fold_(
        x, bounds[0], scratch[0], tickets[0], BETA, first[0],
        second=(w, bounds[1], scratch[1], tickets[1], first[1]), counter=rng[1:2],
    )  # fmt: skip
    assert_equal_verbose(bounds, expected)
    assert rng.tolist() == [5, 42, 3]
    assert scratch[:2].flatten().tolist() == [math.inf, -math.inf] * 2 and not tickets.any()


def test_tracker_observe_advances_the_counter_once_per_call(monkeypatch):
    """observe() advances the call counter by one per call whichever way it folds: the device fold (kernels
    forced on, interpreted on CPU), the torch path, and in eval."""
    import otlib.layers.ranges as ranges_module
    from otlib.layers import RangeTracker

    x, w = torch.randn(16, 24, device=DEVICE), torch.randn(8, 24, device=DEVICE)
    for kernels in (True, False):
        monkeypatch.setattr(ranges_module, "use_kernels", lambda t, levels=2, on=kernels: on)
        tracker = RangeTracker(("x", "w", "out"), BETA, device=DEVICE)
        rng = torch.tensor([0, 0, 9], device=DEVICE)
        tracker.observe({0: x, 1: w}, training=True, counter=rng[1:2])
        tracker.observe({0: x * 2, 1: w}, training=True, counter=rng[1:2])
        tracker.observe({0: x, 1: w}, training=False, counter=rng[1:2])
        assert rng.tolist() == [0, 3, 9], f"kernels={kernels}"
        assert_equal_verbose(
            tracker.bounds[:2],
            _torch_update(torch.stack([_aminmax(x), _aminmax(w)]), torch.stack([_aminmax(x * 2), _aminmax(w)]), False),
        )


def test_tracker_folds_three_operands_in_two_launches(monkeypatch):
    """More operands than a launch takes (two): folded two at a time, the counter advanced once, the rows those of
    the torch path."""
    import otlib.layers.ranges as ranges_module
    from otlib.layers import RangeTracker

    operands = {row: torch.randn(10 + row, 7, device=DEVICE) * (row + 1) for row in range(3)}
    results = []
    for kernels in (True, False):
        monkeypatch.setattr(ranges_module, "use_kernels", lambda t, levels=2, on=kernels: on)
        tracker = RangeTracker(("a", "b", "c"), BETA, device=DEVICE)
        counter = torch.zeros(1, dtype=torch.int64, device=DEVICE)
        for step in range(2):
            tracker.observe({row: x + step for row, x in operands.items()}, training=True, counter=counter)
        assert counter.item() == 2 and tracker._initialised_host == [True] * 3
        results.append(tracker.bounds)
    assert_equal_verbose(results[0], results[1])


def test_tracker_copies_a_sibling_row_in_the_fold_launch(monkeypatch):
    """observe(copy_from=(row, bounds)) sets the row to another tracker's (a shared input's x range) while folding
    its own operands: in the fold's launch (kernels forced on, interpreted on CPU) and on the torch path alike."""
    import otlib.kernels.ranges as kernel_module
    import otlib.layers.ranges as ranges_module
    from otlib.layers import RangeTracker

    x, w = torch.randn(16, 24, device=DEVICE) * 3, torch.randn(8, 24, device=DEVICE)
    launches = []
    launch = kernel_module.minmax_fold_
    monkeypatch.setattr(kernel_module, "minmax_fold_", lambda *a, **kw: launches.append(kw) or launch(*a, **kw))
    for kernels in (True, False):
        monkeypatch.setattr(ranges_module, "use_kernels", lambda t, levels=2, on=kernels: on)
        leader, follower = (RangeTracker(("x", "w", "out"), BETA, device=DEVICE) for _ in range(2))
        rng = torch.tensor([0, 0, 9], device=DEVICE)
        for step in range(2):
            leader.observe({0: x + step, 1: w}, training=True)
            follower.observe({1: w * 2}, training=True, counter=rng[1:2], copy_from=(0, leader.bounds))
            assert_equal_verbose(follower.bounds[0], leader.bounds[0], f"kernels={kernels}, step {step}")
        assert follower._initialised_host == [True, True, False] and follower.initialised.tolist() == [1, 1, 0]
        assert rng.tolist() == [0, 2, 9]
        expected = _torch_update(_aminmax(w * 2), _aminmax(w * 2), False)
        assert_equal_verbose(follower.bounds[1], expected)
    # with kernels: the two leader folds and the two follower folds launched, the copy in the follower's
    assert [kw.get("copy") is not None for kw in launches] == [False, True, False, True]


def test_tracker_counts_and_copies_without_operands(monkeypatch):
    """observe({}, counter, copy_from) — a follower whose weight the model's WeightBank folded — advances the counter
    and copies the sibling's row in one launch of its own (kernels forced on, interpreted on CPU), as the torch path."""
    import otlib.kernels.ranges as kernel_module
    import otlib.layers.ranges as ranges_module
    from otlib.layers import RangeTracker

    launches = []
    launch = kernel_module.count_and_copy_
    monkeypatch.setattr(kernel_module, "count_and_copy_", lambda *a: launches.append(a) or launch(*a))
    for kernels in (True, False):
        monkeypatch.setattr(ranges_module, "use_kernels", lambda t, levels=2, on=kernels: on)
        leader, follower = (RangeTracker(("x", "w", "out"), BETA, device=DEVICE) for _ in range(2))
        rng = torch.tensor([0, 5, 9], device=DEVICE)
        for step in range(2):
            leader.observe({0: torch.randn(6, 10, device=DEVICE) * (step + 2)}, training=True)
            follower.observe({}, training=True, counter=rng[1:2], copy_from=(0, leader.bounds))
            assert_equal_verbose(follower.bounds, torch.cat([leader.bounds[:1], torch.zeros(2, 2, device=DEVICE)]))
        assert follower._initialised_host == [True, False, False] and rng.tolist() == [0, 7, 9]
    assert len(launches) == 2  # with kernels: one launch a call
