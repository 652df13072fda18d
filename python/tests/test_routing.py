"""The routing part: RouterConfig and its presets, select_experts / replay_experts and their
backward, the Router, and routing records.

The library's own results (golden/routing.cpp) must come back bit for bit; a short PyTorch
re-implementation checks the routing rules themselves.
"""

import gc
import warnings

import numpy as np
import pytest

import moe_routing as mr
from conftest import exact_inputs
from moe_routing import presets

DTYPES = [(np.float32, "f32"), (np.float64, "f64")]
TOKENS = 37  # golden/routing.cpp kTokens
ROUTER_TOKENS = 29  # kRouterTokens
ROUTER_HIDDEN = 24  # kRouterHidden


def small_inputs(rows, cols, salt, dtype):
    """golden/routing.cpp's small_inputs: exact_inputs / 64, still exactly representable."""
    return exact_inputs(rows, cols, salt, dtype) / dtype(64)


def assert_bits(actual, expected):
    """Same dtype, shape and bits (np.array_equal would accept 0.0 for -0.0)."""
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def adaptive_config():
    config = presets.mixtral(hidden=16, experts=8, top_k=4)
    config.active_top_k = 3
    config.min_top_k = 1
    config.top_k_threshold = 0.5
    return config


def selection_cases():
    """name -> (config, logits salt, selection bias salt or None), as in golden/routing.cpp."""
    return {
        "mixtral": (presets.mixtral(hidden=16, experts=8), 1, None),
        "deepseek": (presets.deepseek_v3(hidden=16, experts=32, top_k=4, num_groups=4,
                                         groups_selected=2), 2, 3),
        "topk_softmax": (presets.megatron_topk(hidden=16, experts=16, top_k=3,
                                               pre_softmax=False), 4, None),
        "adaptive": (adaptive_config(), 7, None),
    }


# ----------------------------------------------------------------------------------------------
# The library's results, bit for bit.

@pytest.mark.parametrize("dtype,tag", DTYPES)
@pytest.mark.parametrize("case", ["mixtral", "deepseek", "topk_softmax", "adaptive"])
def test_select_experts_and_backward_match_the_library(golden, case, dtype, tag):
    expected = golden("routing")
    config, salt, bias_salt = selection_cases()[case]
    e, k = config.num_experts, config.top_k
    logits = exact_inputs(TOKENS, e, salt, dtype)
    bias = None if bias_salt is None else small_inputs(1, e, bias_salt, dtype)[0]
    routing = mr.select_experts(config, logits, selection_bias=bias)
    assert type(routing).__name__ == "Routing_" + np.dtype(dtype).name
    assert (routing.num_tokens, routing.top_k, routing.num_experts) == (TOKENS, k, e)
    p = f"{case}_{tag}_"
    assert_bits(routing.expert_ids, expected[p + "expert_ids"])
    assert_bits(routing.gates, expected[p + "gates"])
    assert_bits(routing.scores, expected[p + "scores"])
    assert_bits(routing.logits, logits)
    if case == "adaptive":  # the case exercises unused slots
        assert (routing.expert_ids == mr.UNUSED_SLOT).any()

    grad_gates = exact_inputs(TOKENS, k, 5, dtype)
    grad_scores = exact_inputs(TOKENS, e, 6, dtype)
    both = mr.select_experts_backward(config, logits, routing, grad_gates=grad_gates,
                                      grad_scores=grad_scores)
    assert_bits(both, expected[p + "grad_logits"])
    gates_only = mr.select_experts_backward(config, logits, routing, grad_gates)
    assert_bits(gates_only, expected[p + "grad_logits_gates_only"])


@pytest.mark.parametrize("dtype,tag", DTYPES)
def test_replay_experts_matches_the_library(golden, dtype, tag):
    expected = golden("routing")
    config = presets.mixtral(hidden=16, experts=8)
    logits = exact_inputs(TOKENS, 8, 1, dtype)
    ids = expected[f"replay_{tag}_recorded_ids"]
    routing = mr.replay_experts(config, logits, recorded_ids=ids)
    assert_bits(routing.expert_ids, expected[f"replay_{tag}_expert_ids"])
    assert_bits(routing.gates, expected[f"replay_{tag}_gates"])
    assert_bits(routing.scores, expected[f"replay_{tag}_scores"])
    assert (routing.expert_ids == mr.UNUSED_SLOT).any()


def test_replaying_a_selection_reproduces_its_gates(rng):
    config = presets.deepseek_v3(hidden=8, experts=32, top_k=4, num_groups=4, groups_selected=2)
    logits = rng.standard_normal((50, 32)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(32)).astype(np.float32)
    chosen = mr.select_experts(config, logits, bias)
    replayed = mr.replay_experts(config, logits, chosen.expert_ids)
    assert_bits(replayed.gates, chosen.gates)


def router_cases():
    """name -> (config, mode, seed, with a selection bias), as in golden/routing.cpp."""
    noisy = presets.mixtral(hidden=ROUTER_HIDDEN, experts=8)
    noisy.noise = mr.Noise.noisy_topk
    return {
        "router_gpt_oss": (presets.gpt_oss(hidden=ROUTER_HIDDEN, experts=8, top_k=2),
                           mr.Mode.eval, 0, False),
        "router_deepseek": (presets.deepseek_v3(hidden=ROUTER_HIDDEN, experts=16, top_k=4,
                                                num_groups=4, groups_selected=2),
                            mr.Mode.eval, 0, True),
        "router_noisy": (noisy, mr.Mode.train, 3, False),
        "router_switch": (presets.switch_transformer(hidden=ROUTER_HIDDEN, experts=8),
                          mr.Mode.train, 11, False),
    }


def make_router(config, dtype, selection_bias=False):
    """A router with golden/routing.cpp's parameters, written through the parameter views."""
    e, d = config.num_experts, config.hidden
    router = mr.Router(config, dtype=dtype)
    router.weight[...] = small_inputs(e, d, 20, dtype)
    if config.linear_bias:
        router.bias[...] = small_inputs(1, e, 21, dtype)[0]
    if config.noise == mr.Noise.noisy_topk:
        router.noise_weight[...] = small_inputs(e, d, 22, dtype)
    if selection_bias:
        router.selection_bias[...] = small_inputs(1, e, 23, dtype)[0]
    return router


@pytest.mark.parametrize("dtype,tag", DTYPES)
@pytest.mark.parametrize("case", ["router_gpt_oss", "router_deepseek", "router_noisy",
                                  "router_switch"])
def test_router_forward_and_backward_match_the_library(golden, case, dtype, tag):
    expected = golden("routing")
    config, mode, seed, selection_bias = router_cases()[case]
    e, k = config.num_experts, config.top_k
    router = make_router(config, dtype, selection_bias)
    assert type(router).__name__ == "Router_" + np.dtype(dtype).name
    x = exact_inputs(ROUTER_TOKENS, ROUTER_HIDDEN, 24, dtype)
    routing = router.forward(x, mode=mode, seed=seed)
    p = f"{case}_{tag}_"
    for field in ("expert_ids", "gates", "scores", "logits"):
        assert_bits(getattr(routing, field), expected[p + field])

    grads = router.backward(x, gates=exact_inputs(ROUTER_TOKENS, k, 25, dtype),
                            scores=exact_inputs(ROUTER_TOKENS, e, 26, dtype),
                            logits=exact_inputs(ROUTER_TOKENS, e, 27, dtype))
    assert_bits(grads.x, expected[p + "grad_x"])
    assert_bits(grads.weight, expected[p + "grad_weight"])
    assert_bits(grads.bias, expected[p + "grad_bias"])
    if p + "grad_noise_weight" in expected:
        assert_bits(grads.noise_weight, expected[p + "grad_noise_weight"])
    else:
        assert grads.noise_weight.size == 0


@pytest.mark.parametrize("dtype,tag", DTYPES)
def test_router_replay_and_init_weights_match_the_library(golden, dtype, tag):
    expected = golden("routing")
    router = make_router(presets.gpt_oss(hidden=ROUTER_HIDDEN, experts=8, top_k=2), dtype)
    x = exact_inputs(ROUTER_TOKENS, ROUTER_HIDDEN, 24, dtype)
    ids = expected[f"replay_{tag}_recorded_ids"][:ROUTER_TOKENS]
    # golden's recorded ids depend on the row count only through the unused rows (every fifth)
    routing = router.replay(x, ids, mode=mr.Mode.eval)
    for field in ("expert_ids", "gates", "scores", "logits"):
        assert_bits(getattr(routing, field), expected[f"router_replay_{tag}_{field}"])
    router.init_weights(seed=42, stddev=0.02)
    assert_bits(router.weight, expected[f"router_init_{tag}_weight"])


def test_router_backward_uses_the_last_forward():
    config = presets.mixtral(hidden=8, experts=8)
    router = make_router(config, np.float64)
    x = exact_inputs(10, 8, 1, np.float64)
    upstream = exact_inputs(10, 2, 2, np.float64)
    router.forward(x)
    first = router.backward(x, gates=upstream).weight.copy()
    router.forward(exact_inputs(4, 8, 9, np.float64))
    with pytest.raises(mr.Error, match=r"^x: expected shape \[4, 8\]"):  # a 4-token context
        router.backward(x, gates=upstream)
    router.forward(x)
    assert_bits(router.backward(x, gates=upstream).weight, first)


# ----------------------------------------------------------------------------------------------
# The routing rules against PyTorch.

def torch_mixtral(torch, z, k):
    values, ids = torch.topk(torch.softmax(z, dim=-1), k, dim=-1)
    return ids, values / values.sum(dim=-1, keepdim=True)


def torch_deepseek_v3(torch, z, bias, k, groups, kept, scale):
    scores = torch.sigmoid(z)
    biased = scores + bias
    t, e = z.shape
    group_scores = biased.view(t, groups, e // groups).topk(2, dim=-1).values.sum(dim=-1)
    group_ids = group_scores.topk(kept, dim=-1).indices
    group_mask = torch.zeros(t, groups, dtype=torch.bool).scatter(1, group_ids, True)
    expert_mask = group_mask.repeat_interleave(e // groups, dim=1)
    ids = biased.masked_fill(~expert_mask, float("-inf")).topk(k, dim=-1).indices
    weights = scores.gather(1, ids)
    return ids, weights / weights.sum(dim=-1, keepdim=True) * scale


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_select_experts_agrees_with_pytorch(rng, dtype, tol):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((200, 32)).astype(dtype)
    zt = torch.from_numpy(z)

    routing = mr.select_experts(presets.mixtral(hidden=8, experts=32), z)
    ids, gates = torch_mixtral(torch, zt, 2)
    np.testing.assert_array_equal(routing.expert_ids, ids.numpy())
    np.testing.assert_allclose(routing.gates, gates.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(routing.scores, torch.softmax(zt, -1).numpy(), rtol=tol, atol=tol)

    config = presets.megatron_topk(hidden=8, experts=32, top_k=3, pre_softmax=False)
    routing = mr.select_experts(config, z)
    values, ids = zt.topk(3, dim=-1)
    np.testing.assert_array_equal(routing.expert_ids, ids.numpy())
    np.testing.assert_allclose(routing.gates, torch.softmax(values, -1).numpy(), rtol=tol,
                               atol=tol)

    config = presets.deepseek_v3(hidden=8, experts=32, top_k=4, num_groups=8, groups_selected=3)
    bias = (0.3 * rng.standard_normal(32)).astype(dtype)
    routing = mr.select_experts(config, z, selection_bias=bias)
    ids, gates = torch_deepseek_v3(torch, zt, torch.from_numpy(bias), 4, 8, 3, 2.5)
    np.testing.assert_array_equal(routing.expert_ids, ids.numpy())
    np.testing.assert_allclose(routing.gates, gates.numpy(), rtol=tol, atol=tol)
    # the bias changes the selection of some tokens but never the gates' formula
    unbiased = mr.select_experts(config, z)
    assert not np.array_equal(unbiased.expert_ids, routing.expert_ids)


def test_select_experts_backward_agrees_with_autograd(rng):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((40, 16))
    grad_gates = rng.standard_normal((40, 4))
    grad_scores = rng.standard_normal((40, 16))
    config = presets.deepseek_v3(hidden=8, experts=16, top_k=4, num_groups=4, groups_selected=2)
    routing = mr.select_experts(config, z)
    ids = torch.from_numpy(routing.expert_ids.astype(np.int64))

    zt = torch.from_numpy(z.copy()).requires_grad_()
    scores = torch.sigmoid(zt)
    weights = scores.gather(1, ids)
    gates = weights / weights.sum(-1, keepdim=True) * 2.5
    loss = (gates * torch.from_numpy(grad_gates)).sum() + (scores * torch.from_numpy(
        grad_scores)).sum()
    loss.backward()
    d_logits = mr.select_experts_backward(config, z, routing, grad_gates, grad_scores)
    np.testing.assert_allclose(d_logits, zt.grad.numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Arrays: dtype dispatch, views, no copies.

def name(obj):
    return type(obj).__name__


def test_the_dtype_picks_the_overload(rng):
    config = presets.mixtral(hidden=8, experts=8)
    z = rng.standard_normal((6, 8))
    assert name(mr.select_experts(config, z)) == "Routing_float64"
    # a float64 array the Eigen caster would copy still never lands in the float32 overload
    assert name(mr.select_experts(config, np.asfortranarray(z))) == "Routing_float64"
    assert name(mr.select_experts(config, z[:, ::-1])) == "Routing_float64"
    # mixed precision is refused rather than rounded or widened, naming the odd array
    with pytest.raises(TypeError, match="^selection_bias: expected float32"):
        mr.select_experts(config, z.astype(np.float32), np.zeros(8))
    with pytest.raises(TypeError, match="^grad_gates: expected float64"):
        mr.select_experts_backward(config, z, mr.select_experts(config, z),
                                   np.zeros((6, 2), np.float32))
    with pytest.raises(TypeError, match="^routing: expected a Routing_float32"):
        mr.select_experts_backward(config, z.astype(np.float32), mr.select_experts(config, z),
                                   np.zeros((6, 2), np.float32))
    z32 = z.astype(np.float32)
    fortran = mr.select_experts(config, np.asfortranarray(z32))
    assert name(fortran) == "Routing_float32"
    assert_bits(fortran.gates, mr.select_experts(config, z32).gates)
    assert name(mr.select_experts(config, z32.tolist())) == "Routing_float32"


def test_parameter_views_are_the_routers_memory():
    config = presets.mixtral(hidden=8, experts=4)
    router = mr.Router(config)
    weight = router.weight
    assert weight.flags.writeable and weight.dtype == np.float32
    again = router.weight
    assert again.__array_interface__["data"][0] == weight.__array_interface__["data"][0]
    x = exact_inputs(5, 8, 3)
    assert not router.forward(x).logits.any()  # zero weights
    weight[...] = small_inputs(4, 8, 4, np.float32)
    np.testing.assert_allclose(router.forward(x).logits, x @ weight.T, rtol=1e-6)
    # assigning copies the values into the same memory
    router.weight = np.zeros((4, 8), np.float32)
    assert np.shares_memory(router.weight, weight) and not weight.any()
    # parameters the config lacks are empty
    assert router.bias.shape == (0,) and router.noise_weight.shape == (0, 0)
    assert router.selection_bias.shape == (4,)
    assert router.config.hidden == 8


def test_result_views_are_read_only_and_keep_their_object_alive(rng):
    z = rng.standard_normal((6, 8)).astype(np.float32)
    routing = mr.select_experts(presets.mixtral(hidden=8, experts=8), z)
    gates = routing.gates
    assert np.shares_memory(gates, routing.gates) and not gates.flags.writeable
    assert isinstance(gates.base, mr.Routing_float32)
    expected = gates.copy()
    del routing
    gc.collect()
    assert_bits(gates, expected)


def test_torch_tensors_pass_without_copies():
    torch = pytest.importorskip("torch")
    config = presets.mixtral(hidden=8, experts=4)
    router = make_router(config, np.float32)
    x = torch.from_numpy(exact_inputs(6, 8, 5))
    before = router.forward(x.numpy()).logits.copy()
    weight = torch.from_numpy(router.weight)
    assert np.shares_memory(weight.numpy(), router.weight)
    weight.mul_(2)  # in place, through torch: the router sees it
    assert_bits(router.forward(x.numpy()).logits, 2 * before)
    routing = router.forward(x.numpy())
    with warnings.catch_warnings():  # torch warns that it cannot make the tensor read-only
        warnings.simplefilter("ignore", UserWarning)
        gates = torch.from_numpy(routing.gates)
    assert np.shares_memory(gates.numpy(), routing.gates)


def test_the_router_factory():
    config = presets.mixtral(hidden=8, experts=4)
    assert type(mr.Router(config)).__name__ == "Router_float32"
    router = mr.Router(config, dtype=np.float64)
    assert isinstance(router, mr.Router_float64) and router.weight.dtype == np.float64
    with pytest.raises(mr.Error, match="dtype"):
        mr.Router(config, dtype=np.float16)


# ----------------------------------------------------------------------------------------------
# Configuration and presets.

def test_router_config_fields_and_helpers():
    config = mr.RouterConfig(num_experts=16, hidden=32, top_k=4, active_top_k=3, min_top_k=2,
                             score=mr.ScoreFunction.sigmoid)
    assert (config.num_experts, config.hidden, config.top_k) == (16, 32, 4)
    assert config.score == mr.ScoreFunction.sigmoid
    assert config.renormalize is False and config.scaling_factor == 1.0  # defaults kept
    assert (config.max_active_k(), config.min_active_k(), config.adaptive_k()) == (3, 2, True)
    assert not config.groups_enabled()
    mr.validate(config)
    text = repr(config)
    assert text.startswith("RouterConfig(") and "top_k=4" in text and "hidden=32" in text
    with pytest.raises(TypeError, match="bogus"):
        mr.RouterConfig(bogus=1)
    # a method is not a field: the same TypeError, not an AttributeError from assigning to it
    with pytest.raises(TypeError, match="unexpected keyword argument 'groups_enabled'"):
        mr.RouterConfig(groups_enabled=True)


def test_presets_build_the_cpp_presets():
    v3 = presets.deepseek_v3(hidden=7168)
    assert (v3.hidden, v3.num_experts, v3.top_k) == (7168, 256, 8)
    assert v3.score == mr.ScoreFunction.sigmoid and v3.renormalize
    assert (v3.num_groups, v3.groups_selected, v3.scaling_factor) == (8, 4, 2.5)
    assert v3.group_score == mr.GroupScore.sum_top2 and v3.group_mask == mr.GroupMask.neg_inf
    v4 = presets.deepseek_v4(hidden=64)
    assert v4.score == mr.ScoreFunction.sqrt_softplus and v4.renormalize_epsilon == 1e-20
    assert (v4.top_k, v4.scaling_factor) == (6, 1.5)
    oss = presets.gpt_oss(hidden=64, experts=32)
    assert oss.linear_bias and oss.softmax_order == mr.SoftmaxOrder.topk_then_softmax
    assert (oss.num_experts, oss.top_k) == (32, 4)
    switch = presets.switch_transformer(hidden=64, experts=8)
    assert switch.noise == mr.Noise.jitter and switch.top_k == 1
    assert presets.switch_transformer(hidden=64, experts=8, jitter=0).noise == mr.Noise.none
    assert presets.qwen3_moe(hidden=64).renormalize and not presets.olmoe(hidden=64).renormalize
    assert presets.qwen_moe(hidden=64, experts=60, top_k=4, norm_topk_prob=True).renormalize
    assert presets.megatron_topk(hidden=64, experts=8, top_k=2, pre_softmax=True).softmax_order \
        == mr.SoftmaxOrder.softmax_then_topk
    sig = presets.megatron_sigmoid(hidden=64, experts=8, top_k=1, scaling_factor=2.0)
    assert not sig.renormalize and sig.scaling_factor == 2.0
    assert presets.llama4(hidden=64).score == mr.ScoreFunction.sigmoid
    assert presets.longcat_flash(hidden=64).num_experts == 768
    assert presets.deepspeed_top2(hidden=64, experts=8).top_k == 2
    with pytest.raises(TypeError):  # hidden and experts are keywords, as Hidden / Experts in C++
        presets.mixtral(4096)


# ----------------------------------------------------------------------------------------------
# Bad input names the argument.

def test_bad_input_raises_errors_naming_the_argument(rng):
    bad = mr.RouterConfig(num_experts=4, hidden=8, top_k=5)
    with pytest.raises(mr.Error, match=r"^RouterConfig::top_k: expected 1 <= top_k"):
        mr.validate(bad)
    with pytest.raises(mr.Error, match="^RouterConfig::top_k"):
        mr.select_experts(bad, np.zeros((3, 4), np.float32))
    config = presets.mixtral(hidden=8, experts=8)
    z = rng.standard_normal((3, 8)).astype(np.float32)
    with pytest.raises(mr.Error, match=r"^logits: expected shape \[\*, 8\], got \[3, 7\]"):
        mr.select_experts(config, z[:, :7])
    with pytest.raises(mr.Error, match=r"^logits: expected a \[T, E\] float array, got 1-D"):
        mr.select_experts(config, z[0])
    with pytest.raises(mr.Error, match="^logits: expected a .T, E. float array, got str"):
        mr.select_experts(config, "logits")
    with pytest.raises(mr.Error, match="^logits: expected finite"):
        mr.select_experts(config, np.full((3, 8), np.nan, np.float32))
    with pytest.raises(mr.Error, match="^selection_bias"):
        mr.select_experts(config, z, np.zeros(7, np.float32))
    with pytest.raises(mr.Error, match="^recorded_ids"):
        mr.replay_experts(config, z, np.array([[0, 8]] * 3, np.int32))
    # an int64 id past 2^31 is refused, not wrapped to a valid id (2^32 + 1 would be expert 1)
    with pytest.raises(mr.Error, match="^recorded_ids: expected values that fit 32-bit"):
        mr.replay_experts(config, z, np.array([[0, 2**32 + 1]] * 3, np.int64))
    with pytest.raises(mr.Error, match="^recorded_ids: expected a .T, k. integer array"):
        mr.replay_experts(config, z, np.zeros((3, 2), np.float32))
    routing = mr.select_experts(config, z)
    with pytest.raises(mr.Error, match="^grad_gates"):
        mr.select_experts_backward(config, z, routing, np.zeros((3, 3), np.float32))
    with pytest.raises(mr.Error, match="^grad_scores"):
        mr.select_experts_backward(config, z, routing, np.zeros((3, 2), np.float32),
                                   np.zeros((3, 7), np.float32))
    with pytest.raises(TypeError, match="incompatible function arguments"):
        mr.select_experts(config, z, bias=None)  # an unknown keyword


def test_router_bad_input(rng):
    with pytest.raises(mr.Error, match="^RouterConfig::hidden"):
        mr.Router(presets.mixtral(hidden=0))
    router = mr.Router(presets.mixtral(hidden=8, experts=4))
    x = rng.standard_normal((3, 8)).astype(np.float32)
    with pytest.raises(mr.Error, match="^Router.backward: expected a forward"):
        router.backward(x)
    with pytest.raises(mr.Error, match="^x: "):
        router.forward(x[:, :7])
    router.forward(x)
    with pytest.raises(mr.Error, match="^upstream.gates"):
        router.backward(x, gates=np.zeros((3, 3), np.float32))
    with pytest.raises(mr.Error, match="^weight"):
        router.weight = np.zeros((4, 7), np.float32)
    with pytest.raises(mr.Error, match="^bias: expected a router with config.linear_bias"):
        router.bias = np.zeros(4, np.float32)
    with pytest.raises(mr.Error, match="^stddev"):
        router.init_weights(seed=1, stddev=-1.0)
    with pytest.raises(mr.Error, match="^recorded_ids"):
        router.replay(x, np.array([[1, 1]] * 3, np.int32))
    with pytest.raises(mr.Error, match="^recorded_ids: expected values that fit 32-bit"):
        router.replay(x, np.array([[0, 2**32 + 1]] * 3, np.int64))
    with pytest.raises(mr.Error, match="^expert_ids: expected values that fit 32-bit"):
        mr.RecordedLayer(num_experts=8, expert_ids=np.array([[2**31]], np.int64))


# ----------------------------------------------------------------------------------------------
# Routing records.

def test_routing_records_round_trip_and_replay(tmp_path, rng):
    config = presets.mixtral(hidden=8, experts=8)
    router = mr.Router(config)
    router.init_weights(seed=1, stddev=0.5)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    first = router.forward(x)
    adaptive = mr.select_experts(adaptive_config(), rng.standard_normal((20, 8)))
    record = mr.RoutingRecord()
    record.append(first)
    record.append(adaptive)
    record.append(mr.RecordedLayer(num_experts=300, expert_ids=np.array([[299, 0]], np.int32)))
    assert len(record) == 3

    data = record.to_bytes()
    assert data[:8] == b"MOEROUTE"
    header, layer_header = 16, 17
    # one byte per id up to 256 experts (unused slots included), two bytes for 300
    assert len(data) == header + 3 * layer_header + 20 * 2 + 20 * 4 + 2 * 2
    for loaded in (mr.RoutingRecord.from_bytes(data), None):
        if loaded is None:
            record.save(str(tmp_path / "record.bin"))
            loaded = mr.RoutingRecord.load(str(tmp_path / "record.bin"))
        assert len(loaded) == 3
        for i in range(3):
            assert loaded[i].num_experts == record[i].num_experts
            assert_bits(loaded[i].expert_ids, record[i].expert_ids)
    assert_bits(loaded[-2].expert_ids, adaptive.expert_ids)

    replayed = router.replay(x, loaded[0].expert_ids)
    assert_bits(replayed.gates, first.gates)
    with pytest.raises(mr.Error, match="^bytes"):
        mr.RoutingRecord.from_bytes(b"not a record")
    with pytest.raises(IndexError):
        record[3]


def test_without_padding():
    ids = np.array([[0, 1], [2, 3], [4, 5]], np.int32)
    out = mr.without_padding(ids, np.array([True, False, True]))
    assert_bits(out, np.array([[0, 1], [-1, -1], [4, 5]], np.int32))
    with pytest.raises(mr.Error, match="^token_mask"):
        mr.without_padding(ids, np.array([True, False]))
    with pytest.raises(mr.Error, match="^token_mask: expected None or a .T. bool array"):
        mr.without_padding(ids, np.array([1.0, 0.0, 1.0]))
    assert_bits(mr.without_padding(ids.astype(np.int64), None), ids)  # int64 ids that fit


def test_renormalize_min_floors_the_sum_as_llama_cpp_does():
    """w_j = s_j / max(sum_j s_j, 6.103515625e-5) over the chosen sigmoid scores, in float32."""
    config = mr.RouterConfig(num_experts=4, hidden=1, top_k=2, score=mr.ScoreFunction.sigmoid,
                             renormalize=True, renormalize_min=6.103515625e-5)
    logits = np.array([[-11, -12, -20, -30], [1, 2, -1, 0]], np.float32)
    routing = mr.select_experts(config, logits)
    chosen = np.take_along_axis(routing.scores, routing.expert_ids.astype(np.int64), axis=1)
    floor = np.float32(6.103515625e-5)
    np.testing.assert_array_equal(routing.gates,
                                  chosen / np.maximum(chosen.sum(axis=1, keepdims=True), floor))
    assert routing.gates[0].sum() < 0.5 and routing.gates[1].sum() == pytest.approx(1, abs=1e-6)
    with pytest.raises(mr.Error, match="^RouterConfig::renormalize_min"):
        mr.select_experts(mr.RouterConfig(num_experts=4, hidden=1, top_k=2, renormalize_min=1e-3),
                          logits)


def test_expert_scale_is_a_trained_view_that_scales_the_gates():
    """Gemma 4's per_expert_scale: gates *= scale[e], after renormalization; its gradient is
    sum over the slots choosing e of d gates * unscaled gate."""
    plain = mr.RouterConfig(num_experts=6, hidden=4, top_k=2, renormalize=True)
    scaled_config = mr.RouterConfig(num_experts=6, hidden=4, top_k=2, renormalize=True,
                                    expert_scale=True)
    plain_router, router = mr.Router(plain, dtype=np.float64), mr.Router(scaled_config,
                                                                          dtype=np.float64)
    plain_router.init_weights(3, 0.5)
    router.weight[...] = plain_router.weight
    np.testing.assert_array_equal(router.expert_scale, np.ones(6))
    scale = np.linspace(0.5, 2.0, 6)
    router.expert_scale[...] = scale
    assert plain_router.expert_scale.size == 0
    x = exact_inputs(5, 4, 3, np.float64)
    unscaled, routed = plain_router.forward(x), router.forward(x)
    np.testing.assert_array_equal(routed.expert_ids, unscaled.expert_ids)
    np.testing.assert_array_equal(routed.gates, unscaled.gates * scale[unscaled.expert_ids])
    upstream = exact_inputs(5, 2, 4, np.float64)
    grads = router.backward(x, gates=upstream)
    expected = np.zeros(6)
    np.add.at(expected, unscaled.expert_ids, upstream * unscaled.gates)
    np.testing.assert_allclose(grads.expert_scale, expected, rtol=1e-14, atol=1e-15)


def test_free_functions_refuse_a_per_expert_scale_they_cannot_apply():
    config = mr.RouterConfig(num_experts=4, hidden=1, top_k=2, expert_scale=True)
    logits = exact_inputs(3, 4, 1)
    with pytest.raises(mr.Error, match="^RouterConfig::expert_scale: expected false in select"):
        mr.select_experts(config, logits)
