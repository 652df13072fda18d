"""moe_routing's balance part: the load-balancing losses, the global-batch loss, the z-loss, the
noisy top-k losses and the BiasBalancer, against the library (tests/golden/balance.cpp, bit for
bit) and PyTorch re-implementations of the Switch loss, HF Mixtral's loss and the ST-MoE z-loss."""


import numpy as np
import pytest

import moe_routing as mr
from conftest import assert_arrays_named, exact_inputs

T, E, K = 24, 6, 2
DTYPES = [np.float32, np.float64]
TAGS = {np.float32: "float32", np.float64: "float64"}
P = mr.aux_presets


def mixed_logits(salt, dtype):
    """golden/balance.cpp's mixed_logits: every 7th row and 11th column of exact_inputs."""
    return np.ascontiguousarray(exact_inputs(7 * T, 11 * E, salt, dtype)[::7, ::11])


def padding_mask():
    mask = np.ones(T, dtype=bool)
    mask[[5, 17]] = False
    return mask


def kept_mask(columns):
    kept = np.ones((T, K), dtype=bool)
    kept[[2, 7, 20], [1, 0, 1]] = False
    return kept[:, :columns]


def loss_cases():
    """golden/balance.cpp's loss_cases(): (config, expert id columns or 0, masked, with kept)."""
    custom = mr.AuxLossConfig(coefficient=0.02, top_k=2, dropped=mr.DroppedChoices.excluded,
                              divide_by_top_k=False)
    return [
        (P.switch_transformer(0.01), 1, False, False),
        (P.deepspeed_top2(1.0), 2, True, False),
        (P.megatron(2, 0.01), 0, True, False),
        (P.megatron_sequence(2, 6, 0.01), 0, False, False),
        (P.deepseek_v3_sequence(2, 8, 1e-4), 2, True, False),
        (P.hf_switch(8, 1e-3), 1, False, True),
        (custom, 2, True, True),
    ]


def assert_bits(actual, expected):
    """Same dtype, shape and bytes: bit for bit."""
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def assert_loss(loss, g, name, dtype):
    assert type(loss).__name__ == "LossGradient_" + TAGS[dtype]
    assert_bits(np.array([loss.value], dtype), g[name + "_value"])
    assert_bits(loss.grad, g[name + "_grad"])


@pytest.fixture(scope="module")
def g(golden):
    return golden("balance")


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_balancing_losses_match_library(g, dtype):
    t = TAGS[dtype]
    scores, ids, mask = g["scores_" + t], g["expert_ids"], padding_mask()
    for c, (config, columns, masked, with_kept) in enumerate(loss_cases()):
        loss = mr.load_balancing_loss(scores, ids[:, :columns] if columns else None, config,
                                      mask=mask if masked else None,
                                      kept=kept_mask(config.top_k) if with_kept else None)
        assert_loss(loss, g, f"lbl{c}_{t}", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_from_logits_packed_and_layered_match_library(g, dtype):
    t = TAGS[dtype]
    logits, ids, mask = mixed_logits(1, dtype), g["expert_ids"], padding_mask()
    sigmoid, softmax = mr.ScoreFunction.sigmoid, mr.ScoreFunction.softmax
    assert_loss(mr.load_balancing_loss_from_logits(logits, sigmoid, None,
                                                   P.megatron(2, 0.01, sigmoid), mask),
                g, "lbl_logits_sigmoid_" + t, dtype)
    assert_loss(mr.load_balancing_loss_from_logits(logits, softmax, None, P.hf_mixtral(2)),
                g, "lbl_logits_mixtral_" + t, dtype)
    cu_seqlens = np.array([0, 5, 5, 13, 24])
    assert_loss(mr.load_balancing_loss_packed(g["scores_" + t], None,
                                              P.megatron_packed_sequence(2), cu_seqlens, mask),
                g, "lbl_packed_" + t, dtype)
    assert_loss(mr.load_balancing_loss_packed_from_logits(
        logits, softmax, ids, P.deepseek_v3_packed_sequence(2), cu_seqlens, kept=kept_mask(2)),
        g, "lbl_packed_logits_" + t, dtype)
    layered = mr.load_balancing_loss_over_layers([logits, mixed_logits(9, dtype)], softmax,
                                                 P.hf_mixtral(2), mask)
    assert_bits(np.array([layered.value], dtype), g["layers_value_" + t])
    assert_bits(layered.grads[0], g["layers_grad0_" + t])
    assert_bits(layered.grads[1], g["layers_grad1_" + t])


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_loss_matches_library(g, dtype):
    t = TAGS[dtype]
    scores, ids, logits = g["scores_" + t], g["expert_ids"], mixed_logits(1, dtype)
    loss = mr.GlobalLoadBalancingLoss(E, P.deepspeed_top2(0.5), dtype=dtype)
    assert type(loss).__name__ == "GlobalLoadBalancingLoss_" + t
    assert_loss(loss.micro_batch(scores[:12], ids[:12], padding_mask()[:12]), g, "global0_" + t,
                dtype)
    assert_loss(loss.micro_batch_from_logits(logits[12:], mr.ScoreFunction.softmax, ids[12:]),
                g, "global1_" + t, dtype)
    counts = loss.accumulated_counts
    assert_bits(counts, g["global_counts_" + t])
    assert loss.micro_batches == 2 and not counts.flags.writeable
    loss.reset()
    assert loss.micro_batches == 0
    assert np.all(counts == 0)  # a view of the object's counts: reset() shows through it


@pytest.mark.parametrize("dtype", DTYPES)
def test_z_importance_and_noisy_losses_match_library(g, dtype):
    t = TAGS[dtype]
    logits, scores, ids, mask = mixed_logits(1, dtype), g["scores_" + t], g["expert_ids"], \
        padding_mask()
    assert_loss(mr.router_z_loss(logits, 1e-3), g, "z_" + t, dtype)
    assert_loss(mr.router_z_loss(logits, 1e-3, mask), g, "z_masked_" + t, dtype)
    cv = [mr.cv_squared(scores[0]),
          mr.cv_squared(scores[0], mr.VarianceConvention.population)]
    assert_bits(np.array(cv), g["cv_squared_" + t])
    assert_loss(mr.importance_loss(scores, 0.1, mr.VarianceConvention.unbiased, mask), g,
                "importance_dense_" + t, dtype)
    gates = np.take_along_axis(scores, ids.astype(np.int64), axis=1)
    assert_loss(mr.importance_loss(gates, ids, E, 0.1, mr.VarianceConvention.population), g,
                "importance_routed_" + t, dtype)

    sigma, noisy = g["noise_stddev_" + t], g["noisy_logits_" + t]
    assert_bits(sigma, np.abs(exact_inputs(T, E, 11, dtype)) * dtype(0.25) + dtype(0.5))
    load = mr.noisy_topk_load_loss(logits, noisy, sigma, K, 0.1, mask=mask)
    assert_bits(np.array([load.value], dtype), g["noisy_value_" + t])
    assert_bits(load.logits, g["noisy_logits_grad_" + t])
    assert_bits(load.noise_stddev, g["noisy_stddev_grad_" + t])
    assert_bits(mr.noise_stddev_backward(sigma, exact_inputs(T, E, 13, dtype), 0.01),
                g["noise_stddev_backward_" + t])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_balancer_matches_library(g, dtype):
    t = TAGS[dtype]
    ids, mask = g["expert_ids"], padding_mask()
    rules = [mr.BiasUpdateRule.sign, mr.BiasUpdateRule.centered_sign,
             mr.BiasUpdateRule.proportional]
    for r, rule in enumerate(rules):
        options = mr.BiasBalancerOptions(update_rate=1e-2 if r == 2 else 1e-3, rule=rule)
        balancer = mr.BiasBalancer(E, options, dtype=dtype)
        assert type(balancer).__name__ == "BiasBalancer_" + t
        biases = []
        for s in range(3):
            balancer.accumulate(0, ids, mask, kept_mask(2))
            balancer.accumulate_counts(1, np.array([s, 0, 3, 1, 2 * s, 5]))
            assert balancer.pending_micro_batches == 2
            balancer.step()
            biases.append(balancer.bias.copy())
        assert_bits(np.stack(biases), g[f"bias{r}_{t}"])
        assert balancer.steps == 3


def test_bias_is_a_view_of_the_balancer():
    balancer = mr.BiasBalancer_float64(4, mr.BiasBalancerOptions(update_rate=0.5))
    bias = balancer.bias
    assert bias.dtype == np.float64 and not bias.flags.writeable
    address = bias.__array_interface__["data"][0]
    balancer.accumulate(0, np.array([[0], [0], [1], [3]], dtype=np.int32))
    assert np.array_equal(balancer.pending_load(), [2, 1, 0, 1])
    balancer.step()
    # The view taken before the step shows the step's update: it is the balancer's own buffer.
    assert np.array_equal(bias, [-0.5, 0.0, 0.5, 0.0])
    assert balancer.bias.__array_interface__["data"][0] == address
    text = balancer.save()
    other = mr.BiasBalancer_float64(4)
    other.load(text)
    assert np.array_equal(other.bias, bias) and other.steps == 1


def test_configs_have_keywords_and_repr():
    config = mr.AuxLossConfig(top_k=3, counting=mr.AuxCounting.first_choice)
    assert config.top_k == 3 and config.coefficient == 1e-2
    assert "counting=<AuxCounting.first_choice" in repr(config)
    preset = P.hf_switch(8)
    assert preset.sequence_length == 8 and preset.dropped == mr.DroppedChoices.expert_zero
    options = mr.BiasBalancerOptions(rule=mr.BiasUpdateRule.proportional)
    assert "rule=<BiasUpdateRule.proportional" in repr(options)
    with pytest.raises(TypeError, match="rate"):
        mr.BiasBalancerOptions(rate=1.0)


def test_bad_input_names_the_argument(g):
    scores, ids = g["scores_float32"], g["expert_ids"]
    config = P.deepspeed_top2()
    bad = ids.copy()
    bad[0, 0] = E
    with pytest.raises(mr.Error, match="expert_ids: expected expert ids in"):
        mr.load_balancing_loss(scores, bad, config)
    with pytest.raises(mr.Error, match="expert_ids"):
        mr.load_balancing_loss(scores, ids[:, :1], config)
    with pytest.raises(mr.Error, match="mask: expected empty or 24"):
        mr.load_balancing_loss(scores, ids, config, mask=np.ones(T - 1, dtype=bool))
    with pytest.raises(mr.Error, match="mask: expected None or a .T. bool array"):
        mr.load_balancing_loss(scores, ids, config, mask=np.ones(T))
    with pytest.raises(mr.Error, match="kept"):
        mr.load_balancing_loss(scores, ids, config, kept=np.ones((T, 1), dtype=bool))
    with pytest.raises(mr.Error, match="AuxLossConfig::coefficient"):
        mr.load_balancing_loss(scores, ids, mr.AuxLossConfig(coefficient=-1.0, top_k=2))
    with pytest.raises(mr.Error, match="cu_seqlens"):
        mr.load_balancing_loss_packed(scores, None, P.megatron_packed_sequence(2), [0, 7, 3, 24])
    with pytest.raises(mr.Error, match="coefficient"):
        mr.router_z_loss(scores, -1.0)
    with pytest.raises(mr.Error, match="top_k"):
        mr.noisy_topk_load_loss(scores, scores, np.ones_like(scores), E, 0.1)
    with pytest.raises(mr.Error, match="noise_stddev"):
        mr.noisy_topk_load_loss(scores, scores, np.zeros_like(scores), K, 0.1)
    with pytest.raises(mr.Error, match="num_experts"):
        mr.importance_loss(scores[:, :2], ids, 0, 0.1)
    loss = mr.GlobalLoadBalancingLoss_float32(E, config)
    with pytest.raises(mr.Error, match="scores"):
        loss.micro_batch(scores[:, :4], ids)
    with pytest.raises(mr.Error, match="BiasBalancerOptions::update_rate"):
        mr.BiasBalancer_float32(E, mr.BiasBalancerOptions(update_rate=-1.0))
    balancer = mr.BiasBalancer_float32(E)
    with pytest.raises(mr.Error, match="counts"):
        balancer.accumulate_counts(0, np.ones(E - 1, dtype=np.int64))
    with pytest.raises(mr.Error, match="expert_ids"):
        balancer.accumulate(0, bad)
    with pytest.raises(mr.Error, match="checkpoint"):
        balancer.load("not a checkpoint")


def test_bad_arrays_are_named(g):
    """A float array is converted by name: the wrong number of dimensions, or an object that is no
    array, is moe_routing.Error starting with the argument's name (not pybind11's anonymous
    "incompatible function arguments"), whichever argument it is."""
    scores, ids = g["scores_float32"], g["expert_ids"]
    config = P.deepspeed_top2()
    global_loss = mr.GlobalLoadBalancingLoss_float32(E, config)
    calls = [
        ("gates", "[T, k]", lambda a: mr.importance_loss(a, ids, E, 0.1)),
        ("scores", "[T, E]", lambda a: mr.load_balancing_loss(a, ids, config)),
        ("logits", "[T, E]", lambda a: mr.load_balancing_loss_packed_from_logits(
            a, mr.ScoreFunction.softmax, ids, P.deepseek_v3_packed_sequence(2), [0, T])),
        ("logits", "[T, E]", lambda a: mr.router_z_loss(a, 1e-3)),
        ("noise_stddev", "[T, E]", lambda a: mr.noisy_topk_load_loss(scores, scores, a, K, 0.1)),
        ("layer_logits[1]", "[T, E]", lambda a: mr.load_balancing_loss_over_layers(
            [scores, a], mr.ScoreFunction.softmax, P.hf_mixtral(K))),
        ("scores", "[T, E]", lambda a: global_loss.micro_batch(a, ids)),
    ]
    assert_arrays_named(calls, T)
    with pytest.raises(mr.Error, match=r"^x: expected a \[n\] float array, got 2-D array$"):
        mr.cv_squared(scores)
    with pytest.raises(mr.Error, match="^layer_logits: expected a list of .T, E. float arrays, "
                                       "got str$"):
        mr.load_balancing_loss_over_layers("abc", mr.ScoreFunction.softmax, P.hf_mixtral(K))


def test_precision_is_not_mixed(g):
    """The first array (or the global loss's class) fixes the precision: another float array of
    the other one is a TypeError naming it, never a rounding; integers and lists are converted."""
    scores32, scores64 = g["scores_float32"], g["scores_float64"]
    with pytest.raises(TypeError, match="^noisy_logits: expected float64"):
        mr.noisy_topk_load_loss(scores64, scores32, np.ones_like(scores64), K, 0.1)
    with pytest.raises(TypeError, match=r"^layer_logits\[1\]: expected float32"):
        mr.load_balancing_loss_over_layers([scores32, scores64], mr.ScoreFunction.softmax,
                                           P.hf_mixtral(K))
    with pytest.raises(TypeError, match="^scores: expected float32"):
        mr.GlobalLoadBalancingLoss_float32(E, P.deepspeed_top2()).micro_batch(scores64,
                                                                              g["expert_ids"])
    from_list = mr.router_z_loss(scores64.tolist(), 1e-3)
    assert type(from_list).__name__ == "LossGradient_float32"
    assert_bits(from_list.grad, mr.router_z_loss(scores64.astype(np.float32), 1e-3).grad)
    # a 3-D array is a sequence of layers too, in its own precision
    layered = mr.load_balancing_loss_over_layers(np.stack([scores64, scores64]),
                                                 mr.ScoreFunction.softmax, P.hf_mixtral(K))
    assert type(layered).__name__ == "LayeredLossGradient_float64"


def test_switch_loss_against_torch(g):
    """Switch Transformer: L = a E sum_e f_e P_e, f_e the fraction of tokens whose first choice is
    e (no gradient), P_e the mean score; dL/d scores by autograd."""
    torch = pytest.importorskip("torch")
    scores, ids = g["scores_float64"], g["expert_ids"]
    a = 0.01
    loss = mr.load_balancing_loss(scores, ids[:, :1], P.switch_transformer(a))
    s = torch.from_numpy(scores).requires_grad_()
    f = torch.bincount(torch.from_numpy(ids[:, 0]).long(), minlength=E).double() / T
    reference = a * E * (f * s.mean(0)).sum()
    reference.backward()
    np.testing.assert_allclose(loss.value, reference.item(), rtol=1e-14)
    np.testing.assert_allclose(loss.grad, s.grad.numpy(), rtol=1e-14)


def test_mixtral_loss_from_logits_against_torch():
    """HF Mixtral load_balancing_loss_func: softmax of the logits, its top-k, f_e = all k counts /
    T (not divided by k), L = a E sum_e f_e P_e; the gradient reaches the logits through the
    softmax (autograd)."""
    torch = pytest.importorskip("torch")
    logits = mixed_logits(3, np.float64)
    a = 1e-3
    loss = mr.load_balancing_loss_from_logits(logits, mr.ScoreFunction.softmax, None,
                                              P.hf_mixtral(K, a))
    z = torch.from_numpy(logits).requires_grad_()
    probs = torch.softmax(z, dim=-1)
    top = torch.topk(probs, K, dim=-1).indices
    f = torch.nn.functional.one_hot(top, E).sum(1).double().mean(0)
    reference = a * E * (f * probs.mean(0)).sum()
    reference.backward()
    np.testing.assert_allclose(loss.value, reference.item(), rtol=1e-13)
    np.testing.assert_allclose(loss.grad, z.grad.numpy(), rtol=1e-12, atol=1e-18)


def test_z_loss_against_torch():
    """ST-MoE router z-loss: L = b mean_t logsumexp(z_t)^2, dL/dz by autograd."""
    torch = pytest.importorskip("torch")
    logits = mixed_logits(5, np.float64)
    b = 1e-3
    loss = mr.router_z_loss(logits, b)
    z = torch.from_numpy(logits).requires_grad_()
    reference = b * (torch.logsumexp(z, dim=-1) ** 2).mean()
    reference.backward()
    np.testing.assert_allclose(loss.value, reference.item(), rtol=1e-14)
    np.testing.assert_allclose(loss.grad, z.grad.numpy(), rtol=1e-13, atol=1e-18)
    loss32 = mr.router_z_loss(logits.astype(np.float32), b)
    assert loss32.grad.dtype == np.float32
    np.testing.assert_allclose(loss32.value, reference.item(), rtol=1e-6)
