"""Every loss term that is not a task loss: MTN's tensor trace norm and FDN's L_orth and L_aux.

- ``nuclear_norm`` / ``frobenius_norm``: the two matrix norms the regularisers are built from,
  each with a gradient that stays finite where the textbook derivative does not exist (zero,
  repeated singular values). Both always compute in float32.
- ``unfold``: mode-n unfolding of a 3-D tensor (the matrices whose nuclear norms MTN sums).
- ``TensorTraceNorm``: MTN (Multi-layer Tensor trace Norm). For each tower depth i the caller
  stacks the k towers' kernels into W_i [k, d_in, d_out]; the layer returns
  ``lam * mean_i R_i`` with R_i = sum_mode alpha_{i,mode} ||unfold_mode(W_i)||_* + ||W_i||_F,
  or the paper's sum over all 7 mode subsets (``subsets="all"``).
  It owns the learnable alpha, which therefore never reaches the inference model.
- ``orthogonality_loss``: FDN's L_orth between each task's specific and shared features, in the
  paper's form (squared cross-covariance, batch-size free) or the authors' code's form
  (per-sample outer-product norm).
- ``AuxiliaryHeads``: FDN's L_aux heads, one logit per task-specific expert. Training-only.
- ``touched_rows_l2``: L2 on the embedding rows a batch reads, each row counted once however
  often the batch reads it; ``table_l2``: L2 on every row, as DeepCTR's ``l2_reg_embedding``
  applies it. Under Adam the whole-table form pulls a rarely read row back towards zero between its
  reads (its only gradient then is the penalty's, which Adam scales up), so rare ids are not
  memorised.

Nothing here is part of the exported model: attach these to the training model only.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "nuclear_norm",
    "frobenius_norm",
    "unfold",
    "TensorTraceNorm",
    "orthogonality_loss",
    "ORTHOGONALITY_VARIANTS",
    "AuxiliaryHeads",
    "touched_rows_l2",
    "table_l2",
]

ORTHOGONALITY_VARIANTS = ("paper", "authors")

_TINY = float(np.finfo(np.float32).tiny)
_EPS = float(np.finfo(np.float32).eps)


def nuclear_norm(matrix) -> tf.Tensor:
    """Sum of the singular values of a 2-D tensor [m, n]; a float32 scalar.

    The gradient is U_r V_r^T, where U_r, V_r are the singular vectors of the singular values
    above a rank tolerance (numpy's ``matrix_rank`` one: max(s) * max(m, n) * eps). That is the
    minimum-norm subgradient of the nuclear norm, and a well-defined function of the matrix:
    at repeated singular values U_r V_r^T does not depend on which basis the SVD picked for the
    repeated subspace, and the directions of zero singular values (arbitrary in any SVD) are
    left out, so the gradient at the zero matrix is zero rather than a LAPACK-chosen partial
    isometry. For a full-rank matrix it is exactly U V^T.

    TF's registered SVD gradient carries 1 / (s_i^2 - s_j^2) factors that only cancel when
    nothing downstream reads U or V; a custom gradient keeps this function safe whatever TF
    version or composition it ends up in. The input is cast to float32 (half precision must
    not reach the SVD: TF has no CPU float16 kernel and no bfloat16 one at all) and the
    gradient is cast back to the input's dtype.
    """
    matrix = tf.convert_to_tensor(matrix)
    if matrix.shape.rank is not None and matrix.shape.rank != 2:
        raise ValueError(f"nuclear_norm needs a 2-D matrix, got shape {matrix.shape}")
    input_dtype = matrix.dtype

    @tf.custom_gradient
    def _nuclear(x):
        x32 = tf.cast(x, tf.float32)
        s, u, v = tf.linalg.svd(x32, full_matrices=False, compute_uv=True)
        value = tf.reduce_sum(s)
        # The subgradient is built here, not in `grad`: reductions traced inside a custom
        # gradient under Keras' train step fail to dispatch ("unexpected keyword 'initial'").
        tolerance = tf.reduce_max(s) * tf.cast(tf.reduce_max(tf.shape(x32)), tf.float32) * _EPS
        keep = tf.cast(s > tolerance, tf.float32)
        subgradient = tf.matmul(u * keep[tf.newaxis, :], v, transpose_b=True)

        def grad(upstream):
            return tf.cast(upstream * subgradient, input_dtype)

        return value, grad

    return _nuclear(matrix)


def _safe_norm(x: tf.Tensor, axis=None) -> tf.Tensor:
    """Euclidean norm of float32 ``x`` over ``axis`` with gradient x / max(norm, tiny).

    Scaling by max|x| first keeps sum x^2 from underflowing to 0 (or overflowing) while x is
    non-zero, so norm > 0 whenever x != 0 and the gradient has entries <= 1 in magnitude; at
    x = 0 it is exactly 0 (tf.norm's own gradient is NaN there).
    """

    @tf.custom_gradient
    def _norm(t):
        scale = tf.reduce_max(tf.abs(t), axis=axis, keepdims=True)
        safe_scale = tf.where(scale > 0.0, scale, tf.ones_like(scale))
        norm = scale * tf.sqrt(tf.reduce_sum(tf.square(t / safe_scale), axis=axis, keepdims=True))

        def grad(upstream):
            # upstream has the reduced shape; restore the kept dims to broadcast against t.
            up = tf.reshape(upstream, tf.shape(norm))
            return up * t / tf.maximum(norm, _TINY)

        out_norm = tf.squeeze(norm, axis=axis) if axis is not None else tf.reshape(norm, [])
        return out_norm, grad

    return _norm(x)


def frobenius_norm(x) -> tf.Tensor:
    """sqrt(sum x^2) over every entry of a tensor of any shape; a float32 scalar.

    Its gradient x / ||x|| is replaced by 0 at x = 0 (where the norm is not differentiable and
    tf.norm's gradient is NaN), so a regulariser evaluated at zero weights stays trainable.
    Computed in float32; the cast's own gradient returns the input's dtype.
    """
    return _safe_norm(tf.cast(x, tf.float32))


def unfold(tensor, mode: int) -> tf.Tensor:
    """Mode-``mode`` unfolding of a 3-D tensor [d0, d1, d2] -> [d_mode, product of the others].

    The column order (the remaining axes in their original order, row-major) is the one numpy's
    ``moveaxis(t, mode, 0).reshape(d_mode, -1)`` gives; nuclear norms do not depend on it.
    """
    tensor = tf.convert_to_tensor(tensor)
    if tensor.shape.rank != 3:
        raise ValueError(f"unfold needs a 3-D tensor, got shape {tensor.shape}")
    if mode not in (0, 1, 2):
        raise ValueError(f"unfold mode must be 0, 1 or 2, got {mode!r}")
    perm = [mode] + [axis for axis in range(3) if axis != mode]
    moved = tf.transpose(tensor, perm)
    return tf.reshape(moved, [tf.shape(moved)[0], -1])


@keras.saving.register_keras_serializable(package="mtrank")
class TensorTraceNorm(keras.layers.Layer):
    """MTN: the multi-layer tensor trace norm of the task towers' weights, as a loss term.

    ``call(stacks)`` takes a list of ``num_depths`` tensors W_i [n, d_in_i, d_out_i] (the kernels
    of depth i of the n towers, stacked by the caller) and returns the float32 scalar

        lam * mean_i R_i,   R_i = sum_{mode=0,1,2} alpha[i, mode] * ||unfold(W_i, mode)||_*
                                  + ||W_i||_F.

    Three alphas or seven (``subsets``). DESIGN.md (the paper) writes R_i as a sum over all 7
    non-empty subsets s of the 3 modes, each with its own alpha. The unfolding for a subset and
    the one for its complement are transposes of each other, so they have the same nuclear norm,
    and the full set {0, 1, 2} "unfolds" W_i into a single vector, whose nuclear norm is its
    Frobenius norm. With ``subsets="all"`` (the paper's) the layer keeps all 7 alphas, in the
    order {0}, {1}, {2}, {1, 2}, {0, 2}, {0, 1}, {0, 1, 2}, and computes

        R_i = sum_mode (alpha_mode + alpha_complement) * N_mode + (1 + alpha_full) * ||W_i||_F.

    With ``subsets="modes"`` (ours) it keeps one alpha per mode unfolding, which is the slice
    alpha_complement = alpha_full = 0 of that family, not all of it: a free alpha over 7 subsets
    can also move weight onto the Frobenius term, which 3 alphas cannot.

    Why a floor on alpha. Alpha enters the loss linearly, so gradient descent on a free
    (softmax) alpha moves all of its mass onto the term with the smallest norm (on this project:
    within a few epochs). The regulariser then penalises one mode only (with all 7 subsets it
    may collapse onto the Frobenius term, i.e. plain weight decay) and loses the low-rank
    coupling across tasks that is the point of MTN. The floor keeps ``alpha_floor`` of the mass
    spread uniformly over the n alphas, and lets training move the rest:

        alpha = alpha_floor / n + (1 - alpha_floor) * softmax(alpha_logits, axis=-1)

    so every entry is >= alpha_floor / n and each row sums to 1. ``alpha_floor=1`` gives fixed
    uniform alphas; ``alpha_floor=0`` with ``subsets="all"`` is the paper's free alpha.

    Args:
        num_depths: number of tower depths (length of the list ``call`` takes).
        lam: weight lambda of the whole term (1e-5 in the paper); >= 0.
        alpha_floor: share of alpha held uniform over the subsets, in [0, 1].
        learn_alpha: whether ``alpha_logits`` [num_depths, n] is trainable.
        subsets: "modes" (n = 3) or "all" (n = 7, the paper's).

    The layer computes in float32 whatever the global dtype policy (its dtype defaults to
    "float32" and alpha is never autocast), because mixed precision must not reach the SVD.
    """

    SUBSETS = {"modes": 3, "all": 7}

    def __init__(
        self,
        num_depths: int,
        lam: float = 1e-5,
        alpha_floor: float = 0.5,
        learn_alpha: bool = True,
        subsets: str = "modes",
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(num_depths, bool) or not isinstance(num_depths, (int, np.integer)) or num_depths < 1:
            raise ValueError(f"num_depths must be a positive int, got {num_depths!r}")
        if not 0.0 <= float(alpha_floor) <= 1.0:
            raise ValueError(f"alpha_floor must be in [0, 1], got {alpha_floor!r}")
        if not float(lam) >= 0.0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        if subsets not in self.SUBSETS:
            raise ValueError(f"subsets must be one of {sorted(self.SUBSETS)}, got {subsets!r}")
        self.subsets = subsets
        self.num_depths = int(num_depths)
        self.lam = float(lam)
        self.alpha_floor = float(alpha_floor)
        self.learn_alpha = bool(learn_alpha)
        self.alpha_logits = self.add_weight(
            name="alpha_logits",
            shape=(self.num_depths, self.SUBSETS[subsets]),
            initializer="zeros",
            dtype="float32",
            trainable=self.learn_alpha,
            autocast=False,
        )
        # The variable above is all the state; inputs have no shape-dependent weights.
        self.built = True

    @property
    def alphas(self) -> tf.Tensor:
        """Current alpha [num_depths, n]: entries >= alpha_floor / n, rows summing to 1."""
        logits = tf.convert_to_tensor(self.alpha_logits)
        n = float(self.SUBSETS[self.subsets])
        return self.alpha_floor / n + (1.0 - self.alpha_floor) * tf.nn.softmax(logits, axis=-1)

    def _check(self, stacks):
        if not isinstance(stacks, (list, tuple)):
            raise ValueError(
                f"TensorTraceNorm takes a list of {self.num_depths} stacked weight tensors, got {type(stacks).__name__}"
            )
        if len(stacks) != self.num_depths:
            raise ValueError(
                f"TensorTraceNorm was built for num_depths={self.num_depths} but got {len(stacks)} weight stacks"
            )
        for i, stack in enumerate(stacks):
            rank = len(stack.shape)
            if rank != 3:
                raise ValueError(
                    f"weight stack {i} must be 3-D [towers, d_in, d_out], got shape {tuple(stack.shape)} (rank {rank})"
                )

    def compute(self, stacks) -> tf.Tensor:
        """The loss term (same as calling the layer), usable outside Keras' __call__."""
        self._check(stacks)
        alphas = self.alphas
        terms = []
        every = self.subsets == "all"
        for i, stack in enumerate(stacks):
            w = tf.cast(stack, tf.float32)
            r = (1.0 + alphas[i, 6] if every else 1.0) * frobenius_norm(w)
            for mode in range(3):
                alpha = alphas[i, mode] + alphas[i, 3 + mode] if every else alphas[i, mode]
                r = r + alpha * nuclear_norm(unfold(w, mode))
            terms.append(r)
        return self.lam * tf.add_n(terms) / float(self.num_depths)

    def call(self, stacks):
        return self.compute(stacks)

    def compute_output_shape(self, input_shape):
        return ()

    def get_config(self):
        config = super().get_config()
        config.update(
            num_depths=self.num_depths,
            lam=self.lam,
            alpha_floor=self.alpha_floor,
            learn_alpha=self.learn_alpha,
            subsets=self.subsets,
        )
        return config


def orthogonality_loss(specific, shared, variant: str = "paper", normalized: bool = True) -> tf.Tensor:
    """FDN's L_orth between task-specific and task-shared features; a float32 scalar.

    ``specific`` and ``shared``: [B, k, M, d] (batch, tasks, decomposition pairs, features).

    - "paper": sum over tasks k and pairs m of ||(F^s_{k,m})^T F^p_{k,m}||_F^2, F the [B, d]
      batch feature matrices, divided by B^2 when `normalized` (ours; the paper does not divide).
      Each entry of F^s^T F^p is a sum over B rows, so its square grows like B^2; after the
      division the term estimates ||E[f^s f^p^T]||_F^2 and its scale (hence its loss weight)
      does not depend on the batch size.
    - "authors": the FDN authors' public code: per sample, the Frobenius norm (not squared) of
      the outer product f^s_i (f^p_i)^T, i.e. ||f^s_i|| * ||f^p_i||, averaged over the batch and
      summed over tasks and pairs. The norms have a zero gradient at zero features.

    B is read with tf.shape, so a partial last batch is scaled by its own size.
    """
    if variant not in ORTHOGONALITY_VARIANTS:
        raise ValueError(
            f"unknown orthogonality_loss variant {variant!r}; allowed: {', '.join(ORTHOGONALITY_VARIANTS)}"
        )
    specific = tf.cast(specific, tf.float32)
    shared = tf.cast(shared, tf.float32)
    for name, t in (("specific", specific), ("shared", shared)):
        if t.shape.rank != 4:
            raise ValueError(f"orthogonality_loss: {name} must be [B, tasks, pairs, d], got shape {t.shape}")
    # An empty batch contributes 0 instead of 0/0.
    batch = tf.cast(tf.maximum(tf.shape(specific)[0], 1), tf.float32)
    if variant == "paper":
        # Divide before squaring: the same value, without overflow for large batches.
        cross = tf.einsum("bkmd,bkme->kmde", specific, shared) / (batch if normalized else 1.0)
        return tf.reduce_sum(tf.square(cross))
    per_sample = _safe_norm(specific, axis=-1) * _safe_norm(shared, axis=-1)  # [B, k, M]
    return tf.reduce_sum(per_sample) / batch


@keras.saving.register_keras_serializable(package="mtrank")
class AuxiliaryHeads(keras.layers.Layer):
    """FDN's auxiliary heads: one Dense(1) logit per task-specific expert, for L_aux.

    ``call(specific)`` maps specific features [B, k, M, d] to float32 logits [B, k, M] with one
    einsum over a kernel [k, M, d] and a bias [k, M]; head (k, m) sees only expert (k, m)'s
    features. The heads are trained on task k's label and exist only for training: the
    inference model must never contain them, which is why they live here and not with the model
    blocks. Computed in float32 (dtype defaults to "float32", weights never autocast) since
    their logits feed a loss.
    """

    def __init__(self, num_tasks: int, num_pairs: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        for name, value in (("num_tasks", num_tasks), ("num_pairs", num_pairs)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_tasks = int(num_tasks)
        self.num_pairs = int(num_pairs)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or shape[1] != self.num_tasks or shape[2] != self.num_pairs or shape[3] is None:
            raise ValueError(
                f"AuxiliaryHeads(num_tasks={self.num_tasks}, num_pairs={self.num_pairs}) needs specific features "
                f"[B, {self.num_tasks}, {self.num_pairs}, d] with a known d, got {shape}"
            )
        features = int(shape[3])
        # Glorot-uniform of a Dense(d -> 1) per head; keras' glorot on a 3-D shape would treat
        # k as a receptive field and get the fans wrong.
        limit = float(np.sqrt(6.0 / (features + 1)))
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_tasks, self.num_pairs, features),
            initializer=keras.initializers.RandomUniform(-limit, limit),
            dtype="float32",
            autocast=False,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.num_tasks, self.num_pairs), initializer="zeros", dtype="float32", autocast=False
        )
        self.built = True

    def call(self, specific):
        specific = tf.cast(specific, tf.float32)
        return tf.einsum("bkmd,kmd->bkm", specific, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:3]

    def get_config(self):
        config = super().get_config()
        config.update(num_tasks=self.num_tasks, num_pairs=self.num_pairs)
        return config


def touched_rows_l2(table, rows, present) -> tf.Tensor:
    """sum over the distinct rows r in `rows` (where `present` is 1) of ||table[r]||^2: a scalar.

    table [R, D]; rows [B, n] int; present [B, n] float (0 for reads that do not count, such as
    padding). A row read five times counts once, and rows not read get a zero gradient.
    It is a masked sum over the whole table rather than a second gather of the rows read: the
    optimizer updates every row each step anyway, and on CPU the [R, D] mask costs less than
    the gather and its scatter-add gradient (one MMoE step at 200K rows: 18% slower with the
    gather, no slower with the mask). With row-sparse updates the gather would be the cheaper
    form again."""
    rows = tf.reshape(tf.cast(rows, tf.int32), [-1])
    present = tf.reshape(tf.cast(present, tf.float32), [-1])
    reads = tf.math.unsorted_segment_sum(present, rows, tf.shape(table)[0])
    touched = tf.cast(reads > 0, tf.float32)
    return tf.reduce_sum(touched * tf.reduce_sum(tf.square(tf.cast(table, tf.float32)), axis=-1))


def table_l2(table) -> tf.Tensor:
    """sum over every row r of `table` [R, D] of ||table[r]||^2: a scalar."""
    return tf.reduce_sum(tf.square(tf.cast(table, tf.float32)))
