"""trainer.regularizers against numpy: norms and their gradients, MTN, FDN's L_orth and aux heads."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import regularizers as R

F32_EPS = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------- numpy references


def np_nuclear(matrix) -> float:
    return float(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False).sum())


def np_unfold(tensor, axes) -> np.ndarray:
    """Unfolding for a subset of modes: those axes become the rows."""
    axes = list(axes)
    rest = [a for a in range(tensor.ndim) if a not in axes]
    moved = np.transpose(tensor, axes + rest)
    return moved.reshape(int(np.prod([tensor.shape[a] for a in axes])), -1)


def np_fold(matrix, mode, shape) -> np.ndarray:
    moved_shape = [shape[mode]] + [shape[a] for a in range(3) if a != mode]
    return np.moveaxis(matrix.reshape(moved_shape), 0, mode)


def np_min_norm_subgradient(matrix) -> np.ndarray:
    """U_r V_r^T over the singular values above numpy's rank tolerance (float32 eps)."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    keep = s > s.max() * max(matrix.shape) * F32_EPS
    return (u[:, keep]) @ vt[keep]


def np_alphas(logits, floor) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return floor / 3 + (1 - floor) * e / e.sum(axis=-1, keepdims=True)


def np_trace_norm(stacks, alphas, lam) -> float:
    terms = []
    for i, w in enumerate(stacks):
        r = np.linalg.norm(w.ravel())
        r += sum(alphas[i, mode] * np_nuclear(np_unfold(w, [mode])) for mode in range(3))
        terms.append(r)
    return lam * float(np.mean(terms))


def grads(fn, *tensors):
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    with tf.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        value = fn(*tensors)
    return value, tape.gradient(value, tensors)


def orthogonal(n, seed=0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


# ---------------------------------------------------------------- matrix norms


@pytest.mark.parametrize("shape", [(6, 9), (9, 4), (5, 5)])
def test_nuclear_norm_equals_numpy_sum_of_singular_values(shape):
    m = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    value = R.nuclear_norm(tf.constant(m))
    assert value.dtype == tf.float32 and value.shape == ()
    np.testing.assert_allclose(value.numpy(), np_nuclear(m), rtol=1e-5)


def test_nuclear_norm_gradient_is_u_vt_and_matches_finite_differences():
    m = np.random.default_rng(2).normal(size=(5, 7))
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    assert s.min() > 0.3  # full rank, well separated from zero
    _, (g,) = grads(R.nuclear_norm, tf.constant(m, tf.float32))
    np.testing.assert_allclose(g.numpy(), u @ vt, atol=2e-5)

    # Entrywise central differences of the exact (float64) nuclear norm.
    h = 1e-6
    fd = np.zeros_like(m)
    for idx in np.ndindex(m.shape):
        e = np.zeros_like(m)
        e[idx] = h
        fd[idx] = (np_nuclear(m + e) - np_nuclear(m - e)) / (2 * h)
    np.testing.assert_allclose(g.numpy(), fd, atol=1e-4)

    # Directional differences of the float32 TF function itself: forward and gradient agree.
    rng = np.random.default_rng(3)
    for _ in range(3):
        d = rng.normal(size=m.shape)
        step = 1e-2
        fwd = R.nuclear_norm(tf.constant(m + step * d, tf.float32)).numpy()
        bwd = R.nuclear_norm(tf.constant(m - step * d, tf.float32)).numpy()
        np.testing.assert_allclose((fwd - bwd) / (2 * step), np.sum(g.numpy() * d), atol=2e-3)


@pytest.mark.parametrize(
    "name, matrix",
    [
        ("orthogonal", orthogonal(8)),
        ("2 x orthogonal", 2 * orthogonal(8, seed=1)),
        ("diag with a repeated value", np.diag([2.0, 2.0, 1.0])),
        ("rank 1 with a zero singular value", np.ones((2, 6))),
        ("rank 1, tall", np.outer(np.arange(1.0, 7.0), [1.0, -1.0, 2.0])),
        ("zero", np.zeros((3, 4))),
    ],
)
def test_nuclear_norm_gradient_at_repeated_and_zero_singular_values(name, matrix):
    value, (g,) = grads(R.nuclear_norm, tf.constant(matrix, tf.float32))
    g = g.numpy()
    assert np.isfinite(g).all(), name
    np.testing.assert_allclose(value.numpy(), np_nuclear(matrix), rtol=1e-5, atol=1e-6)
    # The minimum-norm subgradient: unique, whatever basis the SVD picked for repeated or null
    # directions (zero at the zero matrix, not an arbitrary partial isometry).
    np.testing.assert_allclose(g, np_min_norm_subgradient(matrix) if matrix.any() else 0.0, atol=2e-5)
    assert np.linalg.norm(g, 2) <= 1 + 1e-5  # a subgradient of the nuclear norm


def test_norms_compute_in_float32_and_return_gradients_in_the_input_dtype():
    m = np.random.default_rng(4).normal(size=(3, 4))
    for fn in (R.nuclear_norm, R.frobenius_norm):
        value, (g,) = grads(fn, tf.constant(m, tf.float16))  # TF has no CPU float16 SVD kernel
        assert value.dtype == tf.float32 and g.dtype == tf.float16
    np.testing.assert_allclose(
        R.nuclear_norm(tf.constant(m, tf.float16)).numpy(), np_nuclear(m.astype(np.float16)), rtol=1e-5
    )


def test_frobenius_norm_value_and_gradient_finite_at_zero():
    x = np.random.default_rng(5).normal(size=(2, 3, 4))
    value, (g,) = grads(R.frobenius_norm, tf.constant(x, tf.float32))
    np.testing.assert_allclose(value.numpy(), np.sqrt((x**2).sum()), rtol=1e-6)
    np.testing.assert_allclose(g.numpy(), x / np.sqrt((x**2).sum()), atol=1e-6)

    value, (g,) = grads(R.frobenius_norm, tf.zeros((2, 3, 4)))
    assert value.numpy() == 0.0
    np.testing.assert_array_equal(g.numpy(), 0.0)

    # Tiny but non-zero entries: x^2 underflows in float32, the norm must not.
    tiny = tf.constant([3e-25, 4e-25], tf.float32)
    value, (g,) = grads(R.frobenius_norm, tiny)
    np.testing.assert_allclose(value.numpy(), 5e-25, rtol=1e-5)
    np.testing.assert_allclose(g.numpy(), [0.6, 0.8], rtol=1e-5)


# ---------------------------------------------------------------- unfold and the MTN formula


def test_unfoldings_match_numpy_reshapes():
    t = np.random.default_rng(6).normal(size=(3, 4, 5)).astype(np.float32)
    norms = []
    for mode in range(3):
        u = R.unfold(tf.constant(t), mode).numpy()
        expected = np.moveaxis(t, mode, 0).reshape(t.shape[mode], -1)
        np.testing.assert_array_equal(u, expected)
        n = R.nuclear_norm(R.unfold(tf.constant(t), mode)).numpy()
        np.testing.assert_allclose(n, np_nuclear(expected), rtol=1e-5)
        norms.append(n)
    assert len({round(float(n), 3) for n in norms}) == 3  # the modes are told apart
    with pytest.raises(ValueError, match="3-D"):
        R.unfold(tf.zeros((3, 4)), 0)
    with pytest.raises(ValueError, match="mode"):
        R.unfold(tf.constant(t), 3)


def test_seven_mode_subsets_reduce_to_three_unfoldings_plus_frobenius():
    """The design decision: complements share a nuclear norm, and the full set is Frobenius."""
    w = np.random.default_rng(7).normal(size=(3, 4, 5))
    subsets = [s for r in (1, 2, 3) for s in itertools.combinations(range(3), r)]
    assert len(subsets) == 7
    a7 = dict(zip(subsets, np.random.default_rng(8).dirichlet(np.ones(7))))
    frob = np.linalg.norm(w.ravel())
    r7 = sum(a * np_nuclear(np_unfold(w, s)) for s, a in a7.items()) + frob
    for s in subsets[:3]:
        complement = tuple(sorted(set(range(3)) - set(s)))
        np.testing.assert_allclose(np_nuclear(np_unfold(w, complement)), np_nuclear(np_unfold(w, s)), rtol=1e-10)
    np.testing.assert_allclose(np_nuclear(np_unfold(w, (0, 1, 2))), frob, rtol=1e-10)
    # The same value with three weights per mode (+ the full set's weight on Frobenius), via the TF code.
    a3 = [a7[(m,)] + a7[tuple(sorted(set(range(3)) - {m}))] for m in range(3)]
    tw = tf.constant(w, tf.float32)
    r3 = sum(a3[m] * R.nuclear_norm(R.unfold(tw, m)).numpy() for m in range(3)) + (1 + a7[(0, 1, 2)]) * frob
    np.testing.assert_allclose(r3, r7, rtol=1e-5)


def test_trace_norm_equals_numpy_formula_with_the_alphas():
    rng = np.random.default_rng(9)
    stacks = [rng.normal(size=(2, 6, 5)).astype(np.float32), rng.normal(size=(2, 5, 1)).astype(np.float32)]
    layer = R.TensorTraceNorm(2, lam=0.3, alpha_floor=0.4)
    logits = rng.normal(size=(2, 3)).astype(np.float32) * 2
    layer.alpha_logits.assign(logits)
    np.testing.assert_allclose(layer.alphas.numpy(), np_alphas(logits.astype(np.float64), 0.4), rtol=1e-6)
    value = layer([tf.constant(s) for s in stacks])
    assert value.dtype == tf.float32 and value.shape == ()
    np.testing.assert_allclose(
        value.numpy(), np_trace_norm(stacks, np_alphas(logits.astype(np.float64), 0.4), 0.3), rtol=1e-5
    )


def test_all_seven_subsets_each_with_its_alpha_as_the_paper_writes_it():
    """subsets="all": R = sum over the 7 non-empty mode subsets s of alpha_s ||unfold_s(W)||_* +
    ||W||_F, each unfolding computed on its own in numpy (complements and the full set included)."""
    rng = np.random.default_rng(12)
    stacks = [rng.normal(size=(2, 6, 5)).astype(np.float32), rng.normal(size=(2, 5, 1)).astype(np.float32)]
    layer = R.TensorTraceNorm(2, lam=0.3, alpha_floor=0.0, subsets="all")
    logits = rng.normal(size=(2, 7)).astype(np.float32)
    layer.alpha_logits.assign(logits)
    e = np.exp(logits.astype(np.float64))
    alphas = e / e.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(layer.alphas.numpy(), alphas, rtol=1e-6)
    order = ([0], [1], [2], [1, 2], [0, 2], [0, 1], [0, 1, 2])
    expected = [
        np.linalg.norm(w.ravel()) + sum(alphas[i, j] * np_nuclear(np_unfold(w, s)) for j, s in enumerate(order))
        for i, w in enumerate(stacks)
    ]
    value = layer([tf.constant(s) for s in stacks])
    np.testing.assert_allclose(value.numpy(), 0.3 * np.mean(expected), rtol=1e-5)
    # the three-alpha form is the slice where the complements' and the full set's alphas are 0
    modes = R.TensorTraceNorm(2, lam=0.3, alpha_floor=0.0)
    modes.alpha_logits.assign(logits[:, :3])
    masked = np.where(np.arange(7) < 3, alphas, 0.0)
    masked /= masked.sum(axis=-1, keepdims=True)
    expected = [
        np.linalg.norm(w.ravel()) + sum(masked[i, j] * np_nuclear(np_unfold(w, s)) for j, s in enumerate(order))
        for i, w in enumerate(stacks)
    ]
    np.testing.assert_allclose(modes([tf.constant(s) for s in stacks]).numpy(), 0.3 * np.mean(expected), rtol=1e-5)
    assert R.TensorTraceNorm.from_config(layer.get_config()).alpha_logits.shape == (2, 7)
    with pytest.raises(ValueError, match="subsets must be one of"):
        R.TensorTraceNorm(1, subsets="some")


def _repeated_sv_stacks():
    q = orthogonal(6, seed=10)
    return {
        "zeros": np.zeros((3, 6, 4)),
        "identical slices": np.stack([q[:, :4]] * 3),  # mode 0 rank 1, modes 1/2 repeated values
        "identity slices": np.stack([np.eye(5)] * 2),
        "orthogonal slices": np.stack([orthogonal(5, seed=s) for s in range(3)]),
    }


@pytest.mark.parametrize("name", list(_repeated_sv_stacks()))
def test_trace_norm_gradients_finite_at_zero_and_repeated_singular_values(name):
    w = _repeated_sv_stacks()[name]
    lam, floor = 0.5, 0.5
    layer = R.TensorTraceNorm(1, lam=lam, alpha_floor=floor)
    layer.alpha_logits.assign([[0.3, -0.2, 0.1]])
    variable = tf.Variable(w, dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = layer([variable])
    g_w, g_alpha = tape.gradient(value, [variable, layer.alpha_logits.value])
    assert np.isfinite(g_w.numpy()).all() and np.isfinite(g_alpha.numpy()).all()
    alphas = np_alphas(np.array([[0.3, -0.2, 0.1]]), floor)
    np.testing.assert_allclose(value.numpy(), np_trace_norm([w], alphas, lam), rtol=1e-5, atol=1e-7)
    if not w.any():
        assert value.numpy() == 0.0
        np.testing.assert_array_equal(g_w.numpy(), 0.0)
        np.testing.assert_array_equal(g_alpha.numpy(), 0.0)
        return
    # d/dW of lam * (sum_mode alpha_mode ||W_(mode)||_* + ||W||_F), from numpy's SVD.
    expected = w / np.linalg.norm(w.ravel())
    for mode in range(3):
        expected += alphas[0, mode] * np_fold(np_min_norm_subgradient(np_unfold(w, [mode])), mode, w.shape)
    np.testing.assert_allclose(g_w.numpy(), lam * expected, atol=3e-5)
    # d/dlogits of lam * sum_mode alpha_mode n_mode, alpha = floor/3 + (1 - floor) softmax(logits).
    norms = np.array([np_nuclear(np_unfold(w, [mode])) for mode in range(3)])
    soft = (alphas[0] - floor / 3) / (1 - floor)
    np.testing.assert_allclose(g_alpha.numpy()[0], lam * (1 - floor) * soft * (norms - soft @ norms), atol=2e-5)


def test_trace_norm_accepts_keras_variables_and_trains_them():
    rng = np.random.default_rng(11)
    kernels = [keras.Variable(rng.normal(size=(2, 4, 3)).astype("float32")) for _ in range(2)]
    layer = R.TensorTraceNorm(2, lam=1.0)
    with tf.GradientTape() as tape:
        value = layer(kernels)
    g = tape.gradient(value, [k.value for k in kernels] + [layer.alpha_logits.value])
    assert all(x is not None and np.isfinite(x.numpy()).all() for x in g)
    assert [v.name for v in layer.trainable_weights] == ["alpha_logits"]
    assert R.TensorTraceNorm(2, learn_alpha=False).trainable_weights == []


# ---------------------------------------------------------------- alpha


@pytest.mark.parametrize("floor", [0.0, 0.3, 0.5, 1.0])
def test_alphas_respect_the_floor_and_sum_to_one_for_any_logits(floor):
    layer = R.TensorTraceNorm(3, alpha_floor=floor)
    np.testing.assert_allclose(layer.alphas.numpy(), 1 / 3, rtol=1e-6)  # zeros -> uniform
    logits = np.array([[50.0, -50.0, 0.0], [1e3, -1e3, 5.0], [-7.0, 3.0, 3.0]], np.float32)
    layer.alpha_logits.assign(logits)
    alphas = layer.alphas.numpy()
    assert np.isfinite(alphas).all()
    assert alphas.min() >= floor / 3 - 1e-7
    np.testing.assert_allclose(alphas.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(alphas, np_alphas(logits.astype(np.float64), floor), atol=1e-6)
    if floor == 1.0:
        np.testing.assert_allclose(alphas, 1 / 3, rtol=1e-6)


def _train_alpha(floor, w, steps=300):
    layer = R.TensorTraceNorm(1, lam=1.0, alpha_floor=floor)
    optimizer = keras.optimizers.SGD(learning_rate=0.5)
    stack = [tf.constant(w)]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = layer(stack)
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))
        return loss

    first = float(step())
    for _ in range(steps - 1):
        last = float(step())
    return layer.alphas.numpy()[0], first, last


def test_free_alpha_drifts_to_the_cheapest_unfolding_and_the_floor_holds_it():
    rng = np.random.default_rng(12)
    # Nearly identical slices: the mode-0 unfolding is close to rank 1, hence the cheapest.
    base = rng.normal(size=(1, 6, 8))
    w = (np.repeat(base, 4, axis=0) + 0.1 * rng.normal(size=(4, 6, 8))).astype(np.float32)
    mode_norms = np.array([np_nuclear(np_unfold(w, [m])) for m in range(3)])
    cheapest = int(np.argmin(mode_norms))
    assert np.sort(mode_norms)[1] - mode_norms.min() > 1.0  # a clear winner

    free, first, last = _train_alpha(0.0, w)
    assert last < first
    assert np.argmax(free) == cheapest and free[cheapest] > 0.95  # the documented drift

    floored, first, last = _train_alpha(0.5, w)
    assert last < first
    assert floored.min() >= 0.5 / 3 - 1e-6
    assert floored[cheapest] > 0.5 / 3 + 0.45  # the free half still moved
    others = np.delete(floored, cheapest)
    np.testing.assert_allclose(others, 0.5 / 3, atol=0.02)  # ... but the floor kept every mode


# ---------------------------------------------------------------- validation and config


def test_trace_norm_validation_errors():
    layer = R.TensorTraceNorm(2)
    good = tf.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="num_depths=2 but got 1"):
        layer([good])
    with pytest.raises(ValueError, match="num_depths=2 but got 3"):
        layer([good, good, good])
    with pytest.raises(ValueError, match=r"stack 1 must be 3-D.*rank 2"):
        layer([good, tf.zeros((3, 4))])
    with pytest.raises(ValueError, match=r"stack 0 must be 3-D.*rank 4"):
        layer([tf.zeros((1, 2, 3, 4)), good])
    for floor in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha_floor"):
            R.TensorTraceNorm(2, alpha_floor=floor)
    with pytest.raises(ValueError, match="lam"):
        R.TensorTraceNorm(2, lam=-1e-5)
    with pytest.raises(ValueError, match="num_depths"):
        R.TensorTraceNorm(0)


def test_trace_norm_config_round_trip_and_float32_under_mixed_precision():
    layer = R.TensorTraceNorm(3, lam=2e-5, alpha_floor=0.25, learn_alpha=False, name="mtn")
    clone = R.TensorTraceNorm.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, R.TensorTraceNorm) and restored.get_config() == layer.get_config()

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = R.TensorTraceNorm(1, lam=1.0)
        w = np.random.default_rng(13).normal(size=(2, 3, 4)).astype(np.float32)
        value = mixed([tf.constant(w)])
    finally:
        keras.config.set_dtype_policy(previous)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), np_trace_norm([w], np.full((1, 3), 1 / 3), 1.0), rtol=1e-5)


# ---------------------------------------------------------------- FDN: orthogonality loss


def np_orth_paper(s, p) -> float:
    b, k, m, _ = s.shape
    total = 0.0
    for t in range(k):
        for j in range(m):
            total += np.sum((s[:, t, j, :].T @ p[:, t, j, :]) ** 2)
    return total / b**2


def np_orth_authors(s, p) -> float:
    b, k, m, _ = s.shape
    total = 0.0
    for i in range(b):
        for t in range(k):
            for j in range(m):
                total += np.linalg.norm(np.outer(s[i, t, j], p[i, t, j]), "fro")
    return total / b


def _features(seed, b=7, k=2, m=3, d=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, k, m, d)).astype(np.float32), rng.normal(size=(b, k, m, d)).astype(np.float32)


def test_orthogonality_paper_matches_numpy_and_is_batch_size_free():
    s, p = _features(14)
    value = R.orthogonality_loss(s, p, "paper")
    assert value.dtype == tf.float32 and value.shape == ()
    np.testing.assert_allclose(value.numpy(), np_orth_paper(s, p), rtol=1e-5)
    assert R.orthogonality_loss(s, p).numpy() == value.numpy()  # "paper" is the default
    doubled = R.orthogonality_loss(np.concatenate([s, s]), np.concatenate([p, p]), "paper")
    np.testing.assert_allclose(doubled.numpy(), value.numpy(), rtol=1e-5)


def test_orthogonality_paper_unnormalized_is_the_paper_s_sum_without_the_batch_factor():
    rng = np.random.default_rng(13)
    specific, shared = rng.normal(size=(2, 64, 2, 3, 5)).astype(np.float32)
    normalized = R.orthogonality_loss(specific, shared, "paper").numpy()
    unnormalized = R.orthogonality_loss(specific, shared, "paper", normalized=False).numpy()
    expected = sum(
        np.linalg.norm(shared[:, k, m].T @ specific[:, k, m]) ** 2 for k in range(2) for m in range(3)
    )  # sum over tasks and pairs of ||(F^s)^T F^p||_F^2
    np.testing.assert_allclose(unnormalized, expected, rtol=1e-4)
    np.testing.assert_allclose(normalized, expected / 64**2, rtol=1e-4)


def test_orthogonality_paper_is_zero_for_features_in_orthogonal_subspaces():
    b, k, m, d = 8, 2, 3, 3
    q = orthogonal(b, seed=15)
    rng = np.random.default_rng(16)
    # Every feature column (a vector over the batch) of `specific` lies in span(q[:, :4]), of
    # `shared` in span(q[:, 4:]): F^s^T F^p = 0.
    s = np.einsum("br,kmrd->bkmd", q[:, :4], rng.normal(size=(k, m, 4, d))).astype(np.float32)
    p = np.einsum("br,kmrd->bkmd", q[:, 4:], rng.normal(size=(k, m, 4, d))).astype(np.float32)
    assert np_orth_paper(s, p) < 1e-10
    assert R.orthogonality_loss(s, p, "paper").numpy() < 1e-9
    assert R.orthogonality_loss(s, p[::-1], "paper").numpy() > 1e-2  # not trivially zero
    # The authors' per-sample form penalises magnitudes, not correlation: it is not zero here.
    assert R.orthogonality_loss(s, p, "authors").numpy() > 1.0


def test_orthogonality_authors_matches_numpy_outer_product_norm():
    s, p = _features(17)
    value = R.orthogonality_loss(s, p, "authors")
    np.testing.assert_allclose(value.numpy(), np_orth_authors(s, p), rtol=1e-5)


@pytest.mark.parametrize("variant", R.ORTHOGONALITY_VARIANTS)
def test_orthogonality_gradient_finite_at_zero_features(variant):
    zeros = tf.zeros((4, 2, 3, 5))
    value, (gs, gp) = grads(lambda a, b: R.orthogonality_loss(a, b, variant), zeros, zeros)
    assert value.numpy() == 0.0
    assert np.isfinite(gs.numpy()).all() and np.isfinite(gp.numpy()).all()
    # One zero sample among non-zero ones.
    s, p = _features(18, b=4, d=5)
    s[1] = 0.0
    _, (gs, gp) = grads(lambda a, b: R.orthogonality_loss(a, b, variant), s, p)
    assert np.isfinite(gs.numpy()).all() and np.isfinite(gp.numpy()).all()


@pytest.mark.parametrize("variant", R.ORTHOGONALITY_VARIANTS)
def test_orthogonality_uses_the_runtime_batch_size(variant):
    reference = {"paper": np_orth_paper, "authors": np_orth_authors}[variant]
    spec = tf.TensorSpec([None, 2, 3, 4], tf.float32)
    fn = tf.function(lambda a, b: R.orthogonality_loss(a, b, variant), input_signature=[spec, spec])
    for b in (7, 3):  # a full batch, then a partial one, through one traced graph
        s, p = _features(19 + b, b=b)
        np.testing.assert_allclose(fn(s, p).numpy(), reference(s, p), rtol=1e-5)


def test_orthogonality_unknown_variant_raises():
    s, p = _features(20)
    with pytest.raises(ValueError, match="'frobenius'.*paper, authors"):
        R.orthogonality_loss(s, p, "frobenius")


# ---------------------------------------------------------------- FDN: auxiliary heads


def test_auxiliary_heads_are_one_dense_per_expert():
    b, k, m, d = 5, 2, 3, 4
    heads = R.AuxiliaryHeads(k, m)
    s, _ = _features(21, b=b, k=k, m=m, d=d)
    out = heads(s)
    assert tuple(out.shape) == (b, k, m) and out.dtype == tf.float32
    rng = np.random.default_rng(22)
    heads.bias.assign(rng.normal(size=(k, m)).astype(np.float32))
    kernel, bias = heads.kernel.numpy(), heads.bias.numpy()
    assert kernel.shape == (k, m, d) and bias.shape == (k, m)
    np.testing.assert_allclose(heads(s).numpy(), np.einsum("bkmd,kmd->bkm", s, kernel) + bias, rtol=1e-5, atol=1e-6)
    # Head (t, j) is a Dense(1) on expert (t, j) alone.
    t, j = 1, 2
    np.testing.assert_allclose(heads(s).numpy()[:, t, j], s[:, t, j] @ kernel[t, j] + bias[t, j], rtol=1e-5, atol=1e-6)
    assert heads(s.astype(np.float16)).dtype == tf.float32
    with pytest.raises(ValueError, match=r"\[B, 2, 3, d\]"):
        R.AuxiliaryHeads(k, m)(np.zeros((b, k, m + 1, d), np.float32))


def test_auxiliary_heads_config_round_trip():
    heads = R.AuxiliaryHeads(2, 3, name="aux_heads")
    s, _ = _features(23, b=4, k=2, m=3, d=6)
    heads(s)
    clone = R.AuxiliaryHeads.from_config(heads.get_config())
    assert clone.get_config() == heads.get_config()
    assert (clone.num_tasks, clone.num_pairs, clone.name) == (2, 3, "aux_heads")
    clone(s)
    clone.set_weights(heads.get_weights())
    np.testing.assert_array_equal(clone(s).numpy(), heads(s).numpy())
