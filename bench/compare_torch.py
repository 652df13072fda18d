#!/usr/bin/python3
"""The same MoE layer shapes in PyTorch on the CPU, written the ways a user would write them.

Variants, float32 and (ops named *_bf16) bfloat16, the same thread count as the C++ benchmark:
  loop     Hugging Face Mixtral-style: per hit expert, index the tokens, run the FFN, index_add_.
  sorted   argsort by expert, per-expert matmuls on contiguous slices, unpermute, sum over k.
  capacity (switch shape) top-1, position by cumsum, [E, C, d] buffer, batched matmul, gather.
and the routing pieces alone (score+top-k, plan build, permute, unpermute+combine).

Prints the BLAS PyTorch runs on ({"blas": path, "core": OpenBLAS kernel type, "config": build}),
then one JSON object per line: {"name": ..., "seconds": ..., "core": ...}. bench/compare_torch.sh
runs it for each OpenBLAS kernel type this CPU can run and in two settings (as installed, and with
passive OpenMP waiting + tcmalloc) and puts the fastest beside this library's benchmark.
"""
import argparse
import ctypes
import json
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch is not installed for /usr/bin/python3 (apt-get install python3-torch): "
          "skipping the PyTorch comparison", file=sys.stderr)
    sys.exit(0)

SHAPES = {  # name: (T, d, f, E, k, capacity_factor or None)
    "small": (2048, 512, 1024, 8, 2, None),
    "medium": (4096, 1024, 2816, 8, 2, None),
    "fine_grained": (4096, 512, 256, 64, 6, None),
    "switch": (4096, 768, 3072, 16, 1, 1.25),
    "decode": (16, 2048, 1408, 64, 6, None),
}


def best_seconds(fn, min_time=0.5, min_runs=3, long_run=5.0):
    """PyTorch at its best: the fastest of the timed runs after one warm-up. A run longer than
    `long_run` seconds is timed once, warm-up included (PyTorch's CPU allocator keeps no cache, so
    a second run would only double the wall time)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > long_run:
        return first
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class Params:
    """SwiGLU experts: y = (silu(x W1) * (x W3)) W2, W1/W3 [E, d, f], W2 [E, f, d]; router wg [E, d].

    Created once per shape (decode holds 2 GB of weights) with requires_grad; forward-only timings
    run under torch.no_grad().
    """

    def __init__(self, T, d, f, E):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(T, d, generator=g).requires_grad_()
        self.wg = (torch.randn(E, d, generator=g) / d ** 0.5).requires_grad_()
        self.w1 = (torch.randn(E, d, f, generator=g) / d ** 0.5).requires_grad_()
        self.w3 = (torch.randn(E, d, f, generator=g) / d ** 0.5).requires_grad_()
        self.w2 = (torch.randn(E, f, d, generator=g) / f ** 0.5).requires_grad_()
        self.gy = torch.randn(T, d, generator=g)
        # Per-expert leaves, as Hugging Face's nn.ModuleList of experts holds them: slicing the
        # stacked [E, d, f] leaf in a loop would make autograd zero-fill a full [E, d, f] gradient
        # per expert, a cost no real model pays. The stacked tensors serve the batched bmm variant.
        self.experts = [tuple(w[e].detach().clone().requires_grad_() for w in (self.w1, self.w3,
                                                                              self.w2))
                        for e in range(E)]

    def zero_grad(self):
        for t in (self.x, self.wg, self.w1, self.w2, self.w3, *sum(self.experts, ())):
            t.grad = None


class Bf16Params:
    """The same parameters in bfloat16, as model.to(torch.bfloat16) holds them; PyTorch 1.13 runs
    its bf16 matmuls on the CPU through oneDNN (AVX512-BF16 where the CPU has it)."""

    def __init__(self, p):
        def leaf(t):
            return t.detach().to(torch.bfloat16).requires_grad_()
        self.x, self.wg = leaf(p.x), leaf(p.wg)
        self.w1, self.w3, self.w2 = leaf(p.w1), leaf(p.w3), leaf(p.w2)
        self.gy = p.gy.to(torch.bfloat16)
        self.experts = [tuple(leaf(w) for w in e) for e in p.experts]

    def zero_grad(self):
        for t in (self.x, self.wg, self.w1, self.w2, self.w3, *sum(self.experts, ())):
            t.grad = None


def route(p, k):
    probs = torch.softmax(p.x @ p.wg.t(), dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, k, dim=-1)
    if k > 1:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    # Hugging Face Mixtral: routing_weights.to(hidden_states.dtype) (a no-op in float32).
    return weights.to(p.x.dtype), ids


def ffn(p, e, h):
    w1, w3, w2 = p.experts[e]
    return (F.silu(h @ w1) * (h @ w3)) @ w2


def layer_loop(p, k):
    weights, ids = route(p, k)
    out = torch.zeros_like(p.x)
    mask = F.one_hot(ids, num_classes=p.wg.shape[0]).permute(2, 1, 0)  # [E, k, T]
    for e in torch.nonzero(mask.sum(dim=(-1, -2))).flatten().tolist():
        slot, token = torch.where(mask[e])
        y = ffn(p, e, p.x[token]) * weights[token, slot, None]
        out.index_add_(0, token, y)
    return out


def layer_sorted(p, k):
    weights, ids = route(p, k)
    T, E = p.x.shape[0], p.wg.shape[0]
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E).tolist()
    rows = p.x[order // k]
    outs = [ffn(p, e, chunk) for e, chunk in enumerate(torch.split(rows, counts)) if chunk.shape[0]]
    ys = torch.cat(outs) if outs else rows
    unsorted = torch.empty_like(ys)
    unsorted[order] = ys
    return (unsorted.view(T, k, -1) * weights.unsqueeze(-1)).sum(dim=1)


def layer_capacity(p, cf):
    probs = torch.softmax(p.x @ p.wg.t(), dim=-1, dtype=torch.float32)
    gate, expert = probs.max(dim=-1)
    T, E = p.x.shape[0], p.wg.shape[0]
    C = int(-(-T * cf // E))
    onehot = F.one_hot(expert, E)
    position = (torch.cumsum(onehot, dim=0) * onehot).sum(dim=-1) - 1
    kept = position < C
    slot = expert * C + position
    buf = torch.zeros(E * C, p.x.shape[1])
    buf[slot[kept]] = p.x[kept]
    h = buf.view(E, C, -1)
    y = torch.bmm(F.silu(torch.bmm(h, p.w1)) * torch.bmm(h, p.w3), p.w2).view(E * C, -1)
    out = torch.zeros_like(p.x)
    out[kept] = y[slot[kept]] * gate[kept, None]
    return out


def pieces(p, k):
    """The routing pieces alone, each on precomputed inputs."""
    logits = (p.x @ p.wg.t()).detach()
    T, E = logits.shape
    weights, ids = route(p, k)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    x = p.x.detach()
    permuted = x[order // k]
    ys = torch.randn_like(permuted)

    def score_topk():
        w, i = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
        return w / w.sum(dim=-1, keepdim=True), i

    def plan():
        o = torch.argsort(flat, stable=True)
        return o, torch.bincount(flat, minlength=E)

    def permute():
        return x.index_select(0, order // k)

    def unpermute_combine():
        unsorted = torch.empty_like(ys)
        unsorted[order] = ys
        return (unsorted.view(T, k, -1) * weights.unsqueeze(-1)).sum(dim=1)

    return {"score_topk": score_topk, "plan": plan, "permute": permute,
            "unpermute_combine": unpermute_combine}


def blas_in_use():
    """The BLAS library PyTorch's matmuls run in, read from this process's mappings after one
    product, and for OpenBLAS the kernel type it picked (openblas_get_corename) and its build."""
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))
    paths = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "blas" in path.rsplit("/", 1)[-1] and path not in paths:
                paths.append(path)
    info = {"blas": paths[0] if paths else "none found", "core": "", "config": ""}
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
        except (OSError, AttributeError):
            continue
        info = {"blas": path, "core": lib.openblas_get_corename().decode(),
                "config": lib.openblas_get_config().decode().strip()}
        break
    return info


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="float32, bfloat16 (dropless shapes), or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    blas = blas_in_use()
    print(json.dumps(blas), flush=True)

    def emit(name, seconds):
        print(json.dumps({"name": name, "seconds": seconds, "core": blas["core"]}), flush=True)

    dtypes = args.dtypes.split(",")
    for shape in args.shapes.split(","):
        T, d, f, E, k, cf = SHAPES[shape]
        if cf is None:
            variants = {"loop": lambda p, k=k: layer_loop(p, k),
                        "sorted": lambda p, k=k: layer_sorted(p, k)}
        else:
            variants = {"capacity": lambda p, cf=cf: layer_capacity(p, cf),
                        "loop": lambda p, k=k: layer_loop(p, k)}
        p = Params(T, d, f, E)
        for variant, layer in (variants if "float32" in dtypes else {}).items():
            with torch.no_grad():
                emit(f"{shape}/{variant}/forward", best_seconds(lambda: layer(p)))

            def step():
                p.zero_grad()
                (layer(p) * p.gy).sum().backward()

            emit(f"{shape}/{variant}/forward_backward", best_seconds(step))
            p.zero_grad()
        with torch.no_grad():
            for piece, fn in (pieces(p, k) if "float32" in dtypes else {}).items():
                emit(f"{shape}/piece/{piece}", best_seconds(fn, min_time=0.2))
        if cf is None and "bfloat16" in dtypes:  # the dropless shapes in bfloat16
            p16 = Bf16Params(p)
            for variant, layer in variants.items():
                with torch.no_grad():
                    emit(f"{shape}/{variant}/forward_bf16", best_seconds(lambda: layer(p16)))

                def step16():
                    p16.zero_grad()
                    (layer(p16) * p16.gy).sum().backward()

                emit(f"{shape}/{variant}/forward_backward_bf16", best_seconds(step16))
                p16.zero_grad()
            del p16
        del p

if __name__ == "__main__":
    main()
