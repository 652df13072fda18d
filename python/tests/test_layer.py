"""MoELayer from Python: the library's bits (golden/layer.cpp), a PyTorch re-implementation of the
forward and backward, zero-copy parameter views, and its errors."""

import numpy as np
import pytest

import moe_routing as moe
from conftest import exact_inputs

T, D, F, E, K = 24, 32, 48, 8, 2
DTYPES = [(np.float32, "f32"), (np.float64, "f64")]


def dropless_config():
    """golden/layer.cpp's dropless_config."""
    return moe.MoELayerConfig(
        router=moe.RouterConfig(num_experts=E, hidden=D, top_k=K, renormalize=True),
        ffn_hidden=F, activation=moe.Activation.swiglu, block_size=4, z_loss_coefficient=1e-3)


def capacity_config():
    """golden/layer.cpp's capacity_config."""
    c = dropless_config()
    c.activation = moe.Activation.gelu
    c.expert_bias = True
    c.dispatch = moe.DispatchKind.capacity
    c.capacity.train_factor = 1.0
    c.shared = moe.SharedExpertConfig(ffn_hidden=40, gated=True)
    c.z_loss_coefficient = 0.0
    return c


def step(config, dtype):
    layer = moe.MoELayer(config, dtype=dtype)
    layer.init_weights(7)
    x = exact_inputs(T, D, 1, dtype)
    out = layer.forward(x, mode=moe.Mode.train, seed=0)
    grad_x = layer.backward(x, exact_inputs(T, D, 2, dtype))
    return layer, out, grad_x


@pytest.mark.parametrize("name,make", [("dropless", dropless_config),
                                       ("capacity", capacity_config)])
@pytest.mark.parametrize("dtype,tag", DTYPES)
def test_step_is_the_libraries_bit_for_bit(golden, name, make, dtype, tag):
    want = golden("layer")
    prefix = f"{name}_{tag}_"
    layer, out, grad_x = step(make(), dtype)
    assert out.y.dtype == dtype and grad_x.dtype == dtype
    np.testing.assert_array_equal(out.y, want[prefix + "y"])
    np.testing.assert_array_equal([out.aux_loss, out.z_loss], want[prefix + "losses"])
    np.testing.assert_array_equal(layer.routing.expert_ids, want[prefix + "expert_ids"])
    np.testing.assert_array_equal(grad_x, want[prefix + "grad_x"])
    parameters, gradients = layer.parameters(), layer.gradients()
    names = sorted(k[len(prefix) + len("value_"):] for k in want if k.startswith(prefix + "value_"))
    assert sorted(parameters) == names and sorted(gradients) == names
    for n in names:
        np.testing.assert_array_equal(parameters[n].ravel(), want[prefix + "value_" + n], err_msg=n)
        np.testing.assert_array_equal(gradients[n].ravel(), want[prefix + "grad_" + n], err_msg=n)


def test_dropless_step_matches_a_pytorch_reimplementation():
    """Mixtral-style routing (softmax, top-2, renormalized), SwiGLU experts with w1, w3 [E * d, f]
    and w2 [E * f, d], the ST-MoE z-loss; gradients by autograd, in float64."""
    torch = pytest.importorskip("torch")
    layer = moe.MoELayer(dropless_config(), dtype=np.float64)
    layer.init_weights(11)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, D))
    grad_y = rng.standard_normal((T, D))
    out = layer.forward(x, mode=moe.Mode.train)
    grad_x = layer.backward(x, grad_y)

    p = {n: torch.tensor(v, requires_grad=True) for n, v in layer.parameters().items()}
    xt = torch.tensor(x, requires_grad=True)
    logits = xt @ p["router.weight"].T
    probs = torch.softmax(logits, dim=-1)
    top, ids = torch.topk(probs, K, dim=-1)
    gates = top / top.sum(dim=-1, keepdim=True)
    y = torch.zeros_like(xt)
    for e in range(E):
        w1 = p["experts.w1"][e * D:(e + 1) * D]
        w3 = p["experts.w3"][e * D:(e + 1) * D]
        w2 = p["experts.w2"][e * F:(e + 1) * F]
        h = torch.nn.functional.silu(xt @ w1) * (xt @ w3)
        gate = (gates * (ids == e)).sum(dim=-1, keepdim=True)
        y = y + gate * (h @ w2)
    z_loss = 1e-3 * (torch.logsumexp(logits, dim=-1) ** 2).mean()
    ((y * torch.tensor(grad_y)).sum() + z_loss).backward()

    np.testing.assert_array_equal(layer.routing.expert_ids, ids.numpy())
    np.testing.assert_allclose(out.y, y.detach().numpy(), rtol=0, atol=1e-12)
    assert out.z_loss == pytest.approx(z_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=0, atol=1e-11)
    for n, g in layer.gradients().items():
        np.testing.assert_allclose(g, p[n].grad.numpy(), rtol=0, atol=1e-11, err_msg=n)


def test_parameters_are_views_an_optimizer_updates_in_place():
    torch = pytest.importorskip("torch")
    layer, out, _ = step(dropless_config(), np.float32)
    params = layer.parameters()
    again = layer.parameters()
    for n, v in params.items():
        assert v.flags.writeable and np.shares_memory(v, again[n]), n
    # A PyTorch optimizer over torch.from_numpy views steps the layer's own memory.
    tensors = [torch.from_numpy(v) for v in params.values()]
    grads = layer.gradients()
    assert all(not g.flags.writeable for g in grads.values())
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    before = params["experts.w2"].copy()
    torch.optim.SGD(tensors, lr=0.1).step()
    np.testing.assert_allclose(params["experts.w2"], before - 0.1 * grads["experts.w2"],
                               rtol=1e-6, atol=1e-7)
    # Zeroing the router's weight through its view makes every score uniform.
    params["router.weight"][...] = 0
    layer.forward(exact_inputs(T, D, 1, np.float32))
    np.testing.assert_array_equal(layer.routing.scores, np.full((T, E), 1 / E, np.float32))


def test_input_is_read_in_place_and_torch_tensors_pass_without_copies():
    torch = pytest.importorskip("torch")
    layer = moe.MoELayer(dropless_config(), dtype=np.float32)
    layer.init_weights(1)
    x = torch.from_numpy(exact_inputs(T, D, 5))
    y = torch.from_numpy(layer.forward(x.numpy()).y)
    # A Fortran-ordered or strided input gives the same result through its one conversion.
    np.testing.assert_array_equal(layer.forward(np.asfortranarray(x.numpy())).y, y.numpy())
    wide = np.zeros((T, 2 * D), np.float32)
    wide[:, ::2] = x.numpy()
    np.testing.assert_array_equal(layer.forward(wide[:, ::2]).y, y.numpy())
    out = layer.forward(x.numpy())
    assert out.y.base is not None  # a view over the output's own memory, not a copy
    assert np.shares_memory(torch.from_numpy(out.y).numpy(), out.y)


def test_padding_mask_packed_sequences_and_replay():
    layer = moe.MoELayer(dropless_config(), dtype=np.float64)
    layer.init_weights(2)
    x = exact_inputs(T, D, 3, np.float64)
    full = layer.forward(x, mode=moe.Mode.train).y.copy()
    recorded = layer.routing.expert_ids.copy()
    # Replaying a forward's own choices reproduces it bit for bit.
    np.testing.assert_array_equal(layer.replay(x, recorded, mode=moe.Mode.train).y, full)
    # Padding rows get zeros; real rows are those of a batch of the real tokens alone.
    mask = np.arange(T) % 3 != 0
    padded = layer.forward(x, token_mask=mask).y
    grad_x = layer.backward(x, np.ones((T, D)))
    np.testing.assert_array_equal(padded[~mask], 0)
    np.testing.assert_array_equal(grad_x[~mask], 0)
    np.testing.assert_array_equal(padded[mask], layer.forward(x[mask]).y)
    np.testing.assert_array_equal(grad_x[mask], layer.backward(x[mask], np.ones((mask.sum(), D))))
    packed = layer.forward(x, cu_seqlens=np.array([0, 10, T], np.int64)).y
    np.testing.assert_array_equal(packed, layer.forward(x).y)


def test_bad_input_raises_errors_naming_the_argument():
    layer = moe.MoELayer(dropless_config(), dtype=np.float32)
    x = exact_inputs(T, D, 1)
    with pytest.raises(moe.Error, match="MoELayer.backward"):
        layer.backward(x, x)
    with pytest.raises(moe.Error, match="MoELayer.gradients"):
        layer.gradients()
    with pytest.raises(moe.Error, match="^x: expected"):
        layer.forward(exact_inputs(T, D + 1, 1))
    layer.forward(x, mode=moe.Mode.train)
    with pytest.raises(moe.Error, match="grad_y"):
        layer.backward(x, exact_inputs(T - 1, D, 1))
    with pytest.raises(moe.Error, match="token_mask"):
        layer.forward(x, token_mask=np.ones(T - 1, bool))
    with pytest.raises(moe.Error, match="token_mask"):
        layer.forward(x, token_mask=np.ones(T, bool), cu_seqlens=np.array([0, T]))
    with pytest.raises(moe.Error, match="cu_seqlens"):
        layer.forward(x, cu_seqlens=np.array([0, T - 1]))
    # a 0/1 float mask is refused rather than read as booleans
    with pytest.raises(moe.Error, match="^token_mask: expected None or a .T. bool array"):
        layer.forward(x, token_mask=np.ones(T))
    with pytest.raises(moe.Error, match="^cu_seqlens: expected a 1-D integer array"):
        layer.forward(x, cu_seqlens=np.array([0.0, T]))
    # an int64 id past 2^31 is refused, not wrapped to a valid id (2^32 + 1 would be expert 1)
    ids = np.asarray(layer.routing.expert_ids, np.int64)
    layer.replay(x, ids)  # int64 ids that fit are taken
    ids[0, 0] = 2**32 + 1
    with pytest.raises(moe.Error, match="^recorded_ids: expected values that fit 32-bit"):
        layer.replay(x, ids)
    with pytest.raises(moe.Error, match="step_balancer"):
        layer.step_balancer()
    with pytest.raises(moe.Error, match="ffn_hidden"):
        bad = dropless_config()
        bad.ffn_hidden = 0
        moe.MoELayer(bad)
    with pytest.raises(moe.Error, match="^MoELayerConfig::swiglu_limit"):
        moe.MoELayer(moe.MoELayerConfig(router=dropless_config().router, ffn_hidden=F,
                                        swiglu_limit=float("nan")))
    with pytest.raises(moe.Error, match="dtype"):
        moe.MoELayer(dropless_config(), dtype=np.float16)
    with pytest.raises(TypeError):  # a float32 layer never rounds a float64 input silently
        layer.forward(x.astype(np.float64))
    with pytest.raises(TypeError):
        layer.backward(x, x.astype(np.float64))
    with pytest.raises(TypeError, match="ffn_hiden"):
        moe.MoELayerConfig(ffn_hiden=3)
    assert isinstance(moe.MoELayer(dropless_config(), dtype=np.float64), moe.MoELayer_float64)


def test_bf16_experts_follow_a_pytorch_optimizer_step_and_stay_near_float():
    torch = pytest.importorskip("torch")
    config = dropless_config()
    config.expert_precision = moe.ExpertPrecision.bf16
    native_config = dropless_config()
    layer = moe.MoELayer(config, dtype=np.float32)
    native = moe.MoELayer(native_config, dtype=np.float32)
    layer.init_weights(7)
    native.init_weights(7)
    x = exact_inputs(T, D, 1, np.float32)
    y = layer.forward(x, mode=moe.Mode.train, seed=0).y
    want = native.forward(x, mode=moe.Mode.train, seed=0).y
    # bf16 operands, float sums: a relative error of a few 2^-8, and not none.
    error = np.linalg.norm(y - want) / np.linalg.norm(want)
    assert 0 < error < 8 * 2.0 ** -8
    layer.backward(x, exact_inputs(T, D, 2, np.float32))
    # An SGD step through torch views of the float weights: the next forward reads the new ones.
    params, grads = layer.parameters(), layer.gradients()
    tensors = [torch.from_numpy(v) for v in params.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    torch.optim.SGD(tensors, lr=0.5).step()
    stepped = moe.MoELayer(config, dtype=np.float32)
    for name, value in stepped.parameters().items():
        value[...] = params[name]
    np.testing.assert_array_equal(layer.forward(x).y, stepped.forward(x).y)
    layer.refresh_bf16_experts()
    with pytest.raises(moe.Error, match="expert_precision = bf16"):
        native.refresh_bf16_experts()


def test_expert_panels_give_the_row_major_layers_bits_and_follow_a_step():
    config = dropless_config()
    config.expert_layout = moe.ExpertLayout.panels
    layer = moe.MoELayer(config, dtype=np.float32)
    plain = moe.MoELayer(dropless_config(), dtype=np.float32)
    layer.init_weights(9)
    plain.init_weights(9)
    x = exact_inputs(T, D, 3, np.float32)
    np.testing.assert_array_equal(layer.forward(x).y, plain.forward(x).y)
    # An edit through the parameter views reaches the next forward.
    for params in (layer.parameters(), plain.parameters()):
        params["experts.w2"][...] *= 0.5
    np.testing.assert_array_equal(layer.forward(x).y, plain.forward(x).y)
    layer.refresh_expert_panels()
    with pytest.raises(moe.Error, match="expert_layout = row_major"):
        plain.refresh_expert_panels()
