"""moe_routing's dispatch part: capacity plans, the dispatch / combine kernels, expert choice and
dropless plans, against the library (tests/golden/dispatch.cpp, bit for bit) and a PyTorch
re-implementation of Megatron's capacity rule."""

import gc

import numpy as np
import pytest

import moe_routing as mr
from conftest import assert_arrays_named, exact_inputs

T, E, K, D = 24, 6, 2, 5
DTYPES = [np.float32, np.float64]
TAGS = {np.float32: "float32", np.float64: "float64"}


def capacity_cases():
    """golden/dispatch.cpp's capacity_cases(), in the same order: (config, mode, seed)."""
    r, p = mr.CapacityRounding, mr.DropPolicy
    return [
        (mr.CapacityConfig(rounding=r.megatron, policy=p.position, train_factor=0.75),
         mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.megatron, policy=p.probability, train_factor=0.75),
         mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.gshard, policy=p.choice_major), mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.deepspeed, policy=p.choice_major, train_factor=0.5,
                           min_capacity=4, renormalize_survivors=True), mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.tutel, policy=p.batch_prioritized, train_factor=0.5,
                           alignment=4), mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.flaxformer, policy=p.choice_major, group_size=8),
         mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.megablocks, policy=p.random, train_factor=0.75),
         mr.Mode.train, 7),
        (mr.CapacityConfig(rounding=r.fixed, policy=p.position, fixed_capacity=3, group_size=12),
         mr.Mode.train, 0),
        (mr.CapacityConfig(rounding=r.megatron, policy=p.position, train_factor=0.5,
                           eval_factor=1.5), mr.Mode.eval, 0),
    ]


CAPACITY_PLAN_ARRAYS = ["token_offsets", "entry_expert", "entry_slot", "entry_weight", "slot_entry",
                        "slot_token", "kept", "dropped", "survivor_sum"]
CAPACITY_PLAN_SCALARS = ["capacity", "group_capacity", "num_groups", "total_kept",
                         "total_dropped", "tokens_without_expert"]
DROPLESS_PLAN_ARRAYS = ["tokens_per_expert", "offsets", "padded_offsets", "sorted_pairs",
                        "pair_row"]


def assert_bits(actual, expected):
    """Same dtype, shape and bytes: bit for bit, -0.0 and NaN payloads included."""
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def assert_capacity_plan(plan, golden, prefix):
    for name in CAPACITY_PLAN_ARRAYS:
        assert_bits(getattr(plan, name), golden[prefix + name])
    assert [getattr(plan, name) for name in CAPACITY_PLAN_SCALARS] == \
        golden[prefix + "scalars"].tolist()


@pytest.fixture(scope="module")
def g(golden):
    return golden("dispatch")


def test_expert_capacity_matches_library(g):
    roundings = [mr.CapacityRounding.megatron, mr.CapacityRounding.deepspeed,
                 mr.CapacityRounding.megablocks, mr.CapacityRounding.tutel,
                 mr.CapacityRounding.flaxformer, mr.CapacityRounding.gshard,
                 mr.CapacityRounding.fixed]
    table = [[mr.expert_capacity(mr.CapacityConfig(rounding=r, train_factor=1.2, fixed_capacity=7),
                                 50, k, 4) for r in roundings] for k in (1, 2)]
    assert table == g["expert_capacity"].tolist()
    assert table[0][:2] == [15, 16]  # the C++ doc's example: megatron 15, deepspeed 16


@pytest.mark.parametrize("dtype", DTYPES)
def test_capacity_plans_match_library(g, dtype):
    gates = g["gates_" + TAGS[dtype]]
    for c, (config, mode, seed) in enumerate(capacity_cases()):
        plan = mr.make_capacity_plan(g["expert_ids"], gates, E, config, mode=mode, seed=seed)
        assert type(plan).__name__ == "CapacityPlan_" + TAGS[dtype]
        assert_capacity_plan(plan, g, f"plan{c}_{TAGS[dtype]}_")
        assert plan.num_tokens == T and plan.top_k == K and plan.num_experts == E
        assert plan.num_slots() == E * plan.capacity
        assert plan.drop_rate() == plan.total_dropped / (T * K)


def test_policies_are_told_apart(g):
    """The cases the golden covers really differ: position vs probability priority, per-group
    capacity, and eval's factor."""
    slots = [g[f"plan{c}_float32_entry_slot"] for c in range(len(capacity_cases()))]
    assert not np.array_equal(slots[0], slots[1])
    assert not np.array_equal(slots[3], slots[4])
    assert g["plan5_float32_scalars"][2] == 3  # three groups of 8 tokens
    assert g["plan8_float32_scalars"][0] == 12  # ceil(24 * 2 / 6 * 1.5) in eval
    assert g["plan3_float32_survivor_sum"].shape == (T,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_match_library(g, dtype):
    t = TAGS[dtype]
    config, mode, _ = capacity_cases()[3]
    plan = mr.make_capacity_plan(g["expert_ids"], g["gates_" + t], E, config, mode)
    x = exact_inputs(T, D, 2, dtype)
    expert_out = exact_inputs(plan.num_slots(), D, 3, dtype)
    grad_y = exact_inputs(T, D, 4, dtype)
    assert_bits(mr.dispatch(plan, x), g["dispatch_" + t])
    assert_bits(mr.dispatch_backward(plan, expert_out), g["dispatch_backward_" + t])
    assert_bits(mr.combine(plan, expert_out), g["combine_" + t])
    grads = mr.combine_backward(plan, expert_out, grad_y)
    assert_bits(grads.expert_out, g["combine_backward_expert_out_" + t])
    assert_bits(grads.weight, g["combine_backward_weight_" + t])
    assert_bits(mr.capacity_plan_backward(plan, grads.weight), g["capacity_plan_backward_" + t])


@pytest.mark.parametrize("dtype", DTYPES)
def test_expert_choice_matches_library(g, dtype):
    t = TAGS[dtype]
    plan = mr.make_expert_choice_plan(g["scores_" + t], mr.ExpertChoiceConfig(), mr.Mode.train)
    assert plan.top_k == 0
    assert_capacity_plan(plan, g, f"expert_choice_{t}_")
    grad_weight = exact_inputs(plan.num_entries(), 1, 5, dtype)[:, 0]
    assert_bits(mr.expert_choice_backward(plan, grad_weight), g["expert_choice_backward_" + t])
    with pytest.raises(mr.Error, match="plan"):
        plan.kept_mask()


def test_dropless_plans_match_library(g):
    for prefix, ids, block in [("dropless_", g["expert_ids_unused"], 4),
                               ("dropless_full_", g["expert_ids"], 1)]:
        plan = mr.make_dropless_plan(ids, E, block_size=block)
        for name in DROPLESS_PLAN_ARRAYS:
            assert_bits(getattr(plan, name), g[prefix + name])
        assert plan.block_size == block and plan.num_pairs() == T * K
    plan = mr.make_dropless_plan(g["expert_ids_unused"], E, 4)
    assert plan.num_routed() == T * K - 2 and plan.padded_rows() % 4 == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropless_kernels_match_library(g, dtype):
    t = TAGS[dtype]
    plan = mr.make_dropless_plan(g["expert_ids_unused"], E, 4)
    rows = plan.padded_rows()
    gates = g["gates_" + t]
    y = exact_inputs(rows, D, 7, dtype)
    assert_bits(mr.dropless_permute(exact_inputs(T, D, 2, dtype), plan), g["dropless_permute_" + t])
    assert_bits(mr.dropless_permute_backward(exact_inputs(rows, D, 6, dtype), plan),
                g["dropless_permute_backward_" + t])
    assert_bits(mr.dropless_unpermute(y, gates, plan), g["dropless_unpermute_" + t])
    grad_y, grad_gates = mr.dropless_unpermute_backward(exact_inputs(T, D, 8, dtype), y, gates,
                                                        plan)
    assert_bits(grad_y, g["dropless_unpermute_backward_y_" + t])
    assert_bits(grad_gates, g["dropless_unpermute_backward_gates_" + t])


def test_plan_from_routing_equals_plan_from_arrays():
    config = mr.RouterConfig(num_experts=E, hidden=1, top_k=K)
    routing = mr.select_experts(config, exact_inputs(T, E, 3, np.float64))
    capacity = capacity_cases()[0][0]
    from_routing = mr.make_capacity_plan(routing, capacity)
    from_arrays = mr.make_capacity_plan(routing.expert_ids, routing.gates, E, capacity)
    assert type(from_routing).__name__ == "CapacityPlan_float64"
    for name in CAPACITY_PLAN_ARRAYS:
        assert_bits(getattr(from_routing, name), getattr(from_arrays, name))


def test_plan_arrays_are_views_of_the_plan(g):
    plan = mr.make_capacity_plan(g["expert_ids"], g["gates_float32"], E, capacity_cases()[0][0])
    slots = plan.entry_slot
    # Two reads share memory: a view of the plan's buffer, not a copy per access.
    assert np.shares_memory(slots, plan.entry_slot)
    assert slots.__array_interface__["data"][0] == plan.entry_slot.__array_interface__["data"][0]
    assert not slots.flags.writeable
    expected = slots.copy()
    del plan
    gc.collect()
    assert np.array_equal(slots, expected)  # the view keeps the plan alive
    dropless = mr.make_dropless_plan(g["expert_ids"], E)
    assert np.shares_memory(dropless.pair_row, dropless.pair_row)


def test_kept_mask(g):
    plan = mr.make_capacity_plan(g["expert_ids"], g["gates_float32"], E, capacity_cases()[0][0])
    mask = plan.kept_mask()
    assert mask.dtype == np.bool_ and mask.shape == (T, K)
    assert np.array_equal(mask.ravel(), plan.entry_slot >= 0)


def test_dtype_is_kept_for_any_layout(g):
    """A float64 array in Fortran order or strided is converted once, never rounded to float32."""
    gates = np.asfortranarray(g["gates_float64"])
    config = capacity_cases()[3][0]
    plan = mr.make_capacity_plan(g["expert_ids"], gates, E, config)
    assert type(plan).__name__ == "CapacityPlan_float64"
    wide = exact_inputs(T, 2 * D, 2, np.float64)
    y = mr.dispatch(plan, wide[:, ::2])
    assert y.dtype == np.float64
    assert_bits(y, mr.dispatch(plan, np.ascontiguousarray(wide[:, ::2])))
    ids64 = g["expert_ids"].astype(np.int64)  # another integer dtype is converted
    assert_bits(mr.make_capacity_plan(ids64, gates, E, config).entry_slot, plan.entry_slot)


def test_configs_have_keywords_and_repr():
    config = mr.CapacityConfig(train_factor=1.25, policy=mr.DropPolicy.probability)
    assert config.train_factor == 1.25 and config.alignment == 1
    assert "train_factor=1.25" in repr(config) and "policy=<DropPolicy.probability" in repr(config)
    assert config.factor(mr.Mode.eval) == 1.0
    with pytest.raises(TypeError, match="capacity_factor"):
        mr.CapacityConfig(capacity_factor=1.0)
    choice = mr.ExpertChoiceConfig(group_size=8)
    assert choice.capacity_config().group_size == 8 and "group_size=8" in repr(choice)


def test_bad_input_names_the_argument(g):
    ids, gates = g["expert_ids"], g["gates_float32"]
    config = mr.CapacityConfig()
    bad_ids = ids.copy()
    bad_ids[4, 1] = E
    with pytest.raises(mr.Error, match="expert_ids: expected expert ids in"):
        mr.make_capacity_plan(bad_ids, gates, E, config)
    with pytest.raises(mr.Error, match="expert_ids: expected values that fit 32-bit"):
        mr.make_capacity_plan(ids.astype(np.int64) + 2**32, gates, E, config)
    with pytest.raises(mr.Error, match="expert_ids: expected a .T, k. integer array"):
        mr.make_capacity_plan(ids.astype(np.float32), gates, E, config)
    with pytest.raises(mr.Error, match="gates"):
        mr.make_capacity_plan(ids, gates[:, :1], E, config)
    with pytest.raises(mr.Error, match="CapacityConfig::train_factor"):
        mr.make_capacity_plan(ids, gates, E, mr.CapacityConfig(train_factor=-1.0))
    with pytest.raises(mr.Error, match="CapacityConfig::alignment"):
        mr.validate(mr.CapacityConfig(alignment=0))
    with pytest.raises(mr.Error, match="expert_ids: expected a row count divisible"):
        mr.make_capacity_plan(ids, gates, E, mr.CapacityConfig(group_size=5))
    plan = mr.make_capacity_plan(ids, gates, E, config)
    with pytest.raises(mr.Error, match="x"):
        mr.dispatch(plan, exact_inputs(T + 1, D, 2))
    with pytest.raises(mr.Error, match="expert_out"):
        mr.combine(plan, exact_inputs(3, D, 2))
    with pytest.raises(mr.Error, match="grad_weight"):
        mr.capacity_plan_backward(plan, np.zeros(3, np.float32))
    with pytest.raises(mr.Error, match="scores"):
        mr.make_expert_choice_plan(g["scores_float32"], mr.ExpertChoiceConfig(group_size=5))
    with pytest.raises(mr.Error, match="block_size"):
        mr.make_dropless_plan(ids, E, block_size=0)
    with pytest.raises(mr.Error, match="num_experts"):
        mr.make_dropless_plan(ids, 0)
    dropless = mr.make_dropless_plan(ids, E)
    with pytest.raises(mr.Error, match="x"):
        mr.dropless_permute(exact_inputs(T - 1, D, 2), dropless)
    with pytest.raises(mr.Error, match="gates"):
        mr.dropless_unpermute(exact_inputs(dropless.padded_rows(), D, 2), gates[:, :1], dropless)


def test_bad_arrays_are_named(g):
    """A float array is converted by name: the wrong number of dimensions, or an object that is no
    array, is moe_routing.Error starting with the argument's name (not pybind11's anonymous
    "incompatible function arguments"), whichever argument it is."""
    ids, gates = g["expert_ids"], g["gates_float32"]
    config = mr.CapacityConfig()
    plan = mr.make_capacity_plan(ids, gates, E, config)
    dropless = mr.make_dropless_plan(ids, E)
    x = exact_inputs(T, D, 2)
    y = exact_inputs(dropless.padded_rows(), D, 3)
    expert_out = exact_inputs(plan.num_slots(), D, 4)
    calls = [
        ("gates", "[T, k]", lambda a: mr.make_capacity_plan(ids, a, E, config)),
        ("gates", "[T, k]", lambda a: mr.dropless_unpermute(y, a, dropless)),
        ("gates", "[T, k]", lambda a: mr.dropless_unpermute_backward(x, y, a, dropless)),
        ("scores", "[T, E]", lambda a: mr.make_expert_choice_plan(a)),
        ("x", "[T, d]", lambda a: mr.dispatch(plan, a)),
        ("grad_y", "[T, d]", lambda a: mr.combine_backward(plan, expert_out, a)),
        ("x", "[T, d]", lambda a: mr.dropless_permute(a, dropless)),
    ]
    assert_arrays_named(calls, T)
    with pytest.raises(mr.Error, match=r"^grad_weight: expected a \[N\] float array, got 2-D"):
        mr.capacity_plan_backward(plan, gates)


def test_a_plan_fixes_the_precision(g):
    """A plan's functions take their arrays in the plan's precision: the other one is a TypeError
    naming the array, never a rounding; integers and lists are converted."""
    ids = g["expert_ids"]
    plan32 = mr.make_capacity_plan(ids, g["gates_float32"], E, mr.CapacityConfig())
    plan64 = mr.make_capacity_plan(ids, g["gates_float64"], E, mr.CapacityConfig())
    x = exact_inputs(T, D, 2, np.float64)
    with pytest.raises(TypeError, match="^x: expected float32"):
        mr.dispatch(plan32, x)
    with pytest.raises(TypeError, match="^grad_weight: expected float64"):
        mr.capacity_plan_backward(plan64, np.zeros(plan64.num_entries(), np.float32))
    assert_bits(mr.dispatch(plan32, x.astype(np.float32).tolist()),
                mr.dispatch(plan32, x.astype(np.float32)))
    assert mr.dispatch(plan64, np.ones((T, D), np.int64)).dtype == np.float64
    dropless = mr.make_dropless_plan(ids, E)
    y = exact_inputs(dropless.padded_rows(), D, 3, np.float64)
    with pytest.raises(TypeError, match="^gates: expected float64"):
        mr.dropless_unpermute(y, g["gates_float32"], dropless)


def test_megatron_capacity_rule_against_torch(g):
    """Megatron-Core drop_and_pad with the position policy: C = ceil(T k / E * cf); entries taken
    in token order (a token's choices together), the first C of each expert kept, slot e C + rank;
    dispatch copies token rows into those slots and combine sums weight * row back."""
    torch = pytest.importorskip("torch")
    ids, gates = g["expert_ids"], g["gates_float64"]
    cf = 0.75
    plan = mr.make_capacity_plan(ids, gates, E, mr.CapacityConfig(
        rounding=mr.CapacityRounding.megatron, policy=mr.DropPolicy.position, train_factor=cf))

    capacity = int(np.ceil(T * K / E * cf))
    flat = torch.from_numpy(ids.astype(np.int64)).reshape(-1)
    one_hot = torch.nn.functional.one_hot(flat, E)
    rank = ((torch.cumsum(one_hot, 0) - 1) * one_hot).sum(1)  # rank of the entry at its expert
    keep = rank < capacity
    slots = torch.where(keep, flat * capacity + rank, torch.full_like(flat, -1))
    assert plan.capacity == capacity
    assert np.array_equal(plan.entry_slot, slots.numpy())
    assert np.array_equal(plan.kept, torch.bincount(flat[keep], minlength=E).numpy())

    x = torch.from_numpy(exact_inputs(T, D, 2, np.float64))
    tokens = torch.arange(T).repeat_interleave(K)
    buffer = torch.zeros(E * capacity, D, dtype=torch.float64)
    buffer[slots[keep]] = x[tokens[keep]]
    assert np.array_equal(mr.dispatch(plan, x.numpy()), buffer.numpy())
    weights = torch.from_numpy(gates).reshape(-1) * keep
    y = torch.zeros(T, D, dtype=torch.float64).index_add_(
        0, tokens[keep], weights[keep, None] * buffer[slots[keep]])
    np.testing.assert_allclose(mr.combine(plan, buffer.numpy()), y.numpy(), rtol=1e-15, atol=0)
