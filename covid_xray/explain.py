"""Visual explanations: compiled Grad-CAM / Grad-CAM++ / Faster-Score-CAM, tf-keras-vis SmoothGrad,
heatmap overlay.

The app explains one image per request on a small CPU, so an :class:`Explainer` is built once
per model at start-up, warmed (its compiled function traced once with a fixed input signature),
and reused. The probabilities, the Grad-CAM map and the Grad-CAM++ map come from ONE compiled
``tf.function`` (one forward pass, one backward pass from the logit to the target layer only,
then two sets of channel weights on the same gradients): tracing DenseNet121 takes seconds on
2 vCPUs, so one trace instead of three keeps start-up short, and the second map costs well under
a millisecond. Probabilities alone (the API, the command line) come from a forward-only compiled
function of the same graph: no gradient tape, no CAM arithmetic. Score-CAM (Faster-Score-CAM)
is a third compiled function, traced on first use; its cost per request is the forward pass of
``scorecam_max_n`` masked images.

Score choice. Both models end in ``Dense(n, softmax)``. The gradient of a softmax probability
vanishes when the model is confident (p -> 1), which gives empty maps exactly on the clearest
cases, so, as in the Grad-CAM paper, the score is the pre-softmax logit of the target class.
A *logits twin* of the model (the same graph and weights, the final Dense without its softmax)
gives these logits; the probabilities are ``softmax(logits)``, identical to the model's output.

tf-keras-vis is the reference implementation: the tests check that our compiled Grad-CAM,
Grad-CAM++ and Score-CAM match its ``Gradcam``, ``GradcamPlusPlus`` and ``Scorecam`` on the same
logits twin. (Per request, tf-keras-vis runs the network eagerly and upsamples with scipy: an
order of magnitude slower on DenseNet121.)

SmoothGrad (Smilkov et al., 2017) is served by tf-keras-vis itself (``Saliency`` with
``smooth_samples``), imported on first use: the gradient of the class logit with respect to the
input pixels, averaged over noisy copies of the image. It is a pixel-level map (no target layer,
no upsampling), computed on the logits twin for the same reason as the CAMs. The noisy copies are
fed to the network several at a time (see :meth:`Explainer._smoothgrad`) and their noise is
seeded, so the same image always gives the same map.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# The class activation maps (CAMs): a target layer's feature maps, weighted. The faithfulness study
# iterates over these (its committed report depends on this tuple).
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam")
# Pixel-level gradient maps, computed by tf-keras-vis (see the module docstring).
SALIENCY_METHODS: tuple[str, ...] = ("smoothgrad",)
# Everything `Explainer.explain` and the app serve.
SERVED_METHODS: tuple[str, ...] = METHODS + SALIENCY_METHODS
# Faster-Score-CAM keeps only this many feature maps (those with the largest spatial variance).
# Its cost is one batched forward pass of this many masked images per request: linear in it.
DEFAULT_SCORECAM_MAX_N = 16
# SmoothGrad: noisy copies of the image whose input gradients are averaged. The SmoothGrad paper
# finds maps stop changing visibly beyond about 50 samples; on the trained DavidNet, 16 samples
# give a map whose pixel correlation with a 64-sample map is 0.975 (8 samples: 0.95). The cost is
# one forward and backward pass per sample (`ModelSpec.smoothgrad_samples` in config: the counts
# the app serves per model, with their measured times).
DEFAULT_SMOOTHGRAD_SAMPLES = 16
# Noise standard deviation as a share of the image's value range (max - min), the paper's 10-20%
# and tf-keras-vis's default.
DEFAULT_SMOOTHGRAD_NOISE = 0.20
# At most this many noisy copies go through the network in one batch: about twice faster per copy
# than one at a time on DenseNet121 (2 vCPUs), for ~1 GB of activations at 224x224.
SMOOTHGRAD_MAX_BATCH = 8
# Seed of the noise: the same image gives the same SmoothGrad map on every request.
SMOOTHGRAD_SEED = 0
# Colour map of the overlay (blue = low, red = high), as in the Grad-CAM literature.
COLORMAP_NAME = "jet"
# Images smaller than this (either side) get no colour bar: there is no room for a legible one.
MIN_COLORBAR_SIDE = 48
# Colour-bar labels are drawn only on images at least this tall.
MIN_COLORBAR_LABEL_SIDE = 160
# The scale's strip beside the image: plain white, so it never hides any of the image.
COLORBAR_BACKGROUND = (255, 255, 255)
# heatmap_notes: a map whose pixel standard deviation (values in [0, 1]) is at most this is "flat"
# (a uniform wash, or all zeros: no localized evidence); a compact hot spot of 1% of the image
# already has a standard deviation of about 0.1.
FLAT_MAP_STD_MAX = 0.05
# heatmap_notes: "most of the map lies on the border" when its border mass (faithfulness.border_mass:
# share of the mass in the outer 10% band of each side) exceeds this; a uniform map has 0.36.
BORDER_NOTE_MIN = 0.5
FLAT_MAP_NOTE = "No localized evidence for this class: the map is nearly uniform."
BORDER_MAP_NOTE = (
    "Most of this map lies on the image border (burned-in text, side markers), not on the lungs."
)
# heatmap_notes, with the what-if probe's regions (`probe.BELOW_LUNGS_FROM`, `probe.CHEST_BOX`):
# a uniform map puts 0.20 of its mass below the lungs and 0.48 outside the chest box. Over the
# shipped DavidNet's Grad-CAM maps of the 66 test images the medians are 0.21 and 0.52; 2 maps
# exceed 0.35 below the lungs (curated Case 1 among them) and 8 exceed 0.60 outside the chest.
BELOW_LUNGS_NOTE_MIN = 0.35
OUTSIDE_CHEST_NOTE_MIN = 0.60
BELOW_LUNGS_NOTE = (
    "Much of this map lies below the lungs (the abdomen): evidence there is a shortcut, not a lung finding."
)
OUTSIDE_CHEST_NOTE = (
    "Most of this map lies outside the chest (shoulders, neck, abdomen, film edges), not on the lungs."
)


class ExplainerError(ValueError):
    """The model or the request cannot be explained; the message is meant for people."""


class _CamResult(NamedTuple):
    cam_layer: tf.Tensor  # (h, w) at the target layer's resolution, normalised to [0, 1]
    heatmap: tf.Tensor  # (H, W) at the input resolution, normalised to [0, 1]


class _InteractiveResult(NamedTuple):
    """What the compiled interactive function returns: probabilities and both gradient CAMs."""

    probs: tf.Tensor  # (num_classes,)
    gradcam: _CamResult
    gradcam_plus_plus: _CamResult
    features: tf.Tensor  # (D,) the `feature_layer` output (pooled if spatial); (0,) without one


def _check_method(method: str) -> None:
    if method not in SERVED_METHODS:
        raise ExplainerError(f"Unknown explanation method {method!r}; expected one of {SERVED_METHODS}.")


# tf-keras-vis draws SmoothGrad's noise from NumPy's global generator (`np.random.normal`): it is
# seeded for the call and restored afterwards, one SmoothGrad call at a time.
_GLOBAL_NUMPY_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _seeded_global_numpy_rng(seed: int):
    """Seed NumPy's global generator for the enclosed code, then restore its previous state.

    Other code drawing from the global generator in another thread meanwhile would shift the
    draws; nothing in this project does while a model runs (the Predictor runs one at a time).
    """
    with _GLOBAL_NUMPY_RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (1 for a prime `n` above `limit`)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _gradient_cam(result: _InteractiveResult, method: str) -> _CamResult:
    """The map of a gradient method ("gradcam" or "gradcam++") from the shared compiled result."""
    return result.gradcam_plus_plus if method == "gradcam++" else result.gradcam


def _import_tensorflow() -> None:
    """Bind `tf` and `keras` in this module on first use (by `Explainer`).

    Importing this module imports no TensorFlow: the overlay, the notes and `METHODS` serve the
    page while the models still load, and a request in that window must not race the loader's
    TensorFlow import (TensorFlow's import is not safe in two threads at once).
    """
    global tf, keras
    import keras
    import tensorflow as tf


@functools.cache
def _logits_head_class() -> type:
    """`_LogitsHead`, a Keras layer class, defined on first use (see `_import_tensorflow`)."""
    _import_tensorflow()

    class _LogitsHead(keras.layers.Layer):
        """The classifier's final Dense layer without its softmax, sharing its weights.

        Sharing (instead of copying) keeps the logits twin in step with the model if its weights
        change.
        """

        def __init__(self, dense, **kwargs):
            super().__init__(**kwargs)
            self.dense = dense

        def call(self, inputs):
            logits = keras.ops.matmul(inputs, self.dense.kernel)
            if self.dense.use_bias:
                logits = keras.ops.add(logits, self.dense.bias)
            return logits

    return _LogitsHead


def _resize_aligned(images: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear resize with aligned corners: scipy's ``zoom(order=1)``, which tf-keras-vis uses."""
    return tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=True, half_pixel_centers=False)


def _minmax(cam: tf.Tensor) -> tf.Tensor:
    """Scale a map to [0, 1]; a constant map (e.g. all zeros: no positive evidence) becomes zeros."""
    low = tf.reduce_min(cam)
    return tf.math.divide_no_nan(cam - low, tf.reduce_max(cam) - low)


# Grad-CAM++ multiplies by exp(score); capped so that exp stays finite in float32 (see below).
_MAX_EXP_SCORE = 50.0


def _gradcam_weights(grads: tf.Tensor, activations: tf.Tensor, score: tf.Tensor) -> tf.Tensor:
    """Grad-CAM channel weights: the spatial mean of the score's gradients, (1, 1, 1, K)."""
    del activations, score  # Grad-CAM weights depend on the gradients only.
    return tf.reduce_mean(grads, axis=(1, 2), keepdims=True)


def _gradcam_plus_plus_weights(grads: tf.Tensor, activations: tf.Tensor, score: tf.Tensor) -> tf.Tensor:
    """Grad-CAM++ channel weights from first-order gradients (closed form of Chattopadhyay et al.).

    With the exponential score Y = exp(S) and g = dS/dA, the 1st, 2nd and 3rd derivatives of Y
    are exp(S) g, exp(S) g^2 and exp(S) g^3, and alpha = d2 / (2 d2 + sum(A) d3). The arithmetic
    follows tf-keras-vis's GradcamPlusPlus step by step (spatial renormalisation of the alphas
    and divide-by-zero guards included). Mathematically exp(S) cancels; it is kept for the same
    rounding as the reference, capped at exp(50) (tf-keras-vis overflows to inf/NaN for logits
    above 88; the cap only rescales the map).

    Numerical caveat, inherited from the reference: alpha = 1 / (2 + g sum(A)) has a pole where
    gradients are negative, and the renormalisation sums alphas over all locations, so a channel
    with a near-singular location gets an arbitrary (tiny) weight. TF's graph optimiser reorders
    a few of these multiplications, so the compiled map differs from tf-keras-vis's eager one by
    rounding amplified at those poles: < 1e-6 on well-conditioned maps, up to ~1e-3 (maps in
    [0, 1]) on a random-weight DavidNet.
    """
    exp_score = tf.exp(tf.minimum(score, _MAX_EXP_SCORE))
    first_derivative = exp_score * grads
    second_derivative = first_derivative * grads
    third_derivative = second_derivative * grads
    activation_sum = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
    alpha_denominator = second_derivative * 2.0 + third_derivative * activation_sum
    alpha_denominator += tf.cast(second_derivative == 0.0, grads.dtype)
    alphas = second_derivative / alpha_denominator
    alpha_norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
    alphas /= alpha_norm + tf.cast(alpha_norm == 0.0, grads.dtype)
    # Only positive gradients count: locations that would raise the class score.
    return tf.reduce_sum(tf.nn.relu(first_derivative) * alphas, axis=(1, 2), keepdims=True)


class Explainer:
    """Built once per model at start-up, warmed, reused for every request.

    Args:
        model: a Keras 3 functional classifier with one image input of fixed size and one output,
            whose last layer is ``Dense(n, activation="softmax")``. Its layers must be direct
            layers of the model (no nested sub-model), as ``models.py`` builds them.
        layer_name: the Grad-CAM target layer (``config.MODELS[name].gradcam_layer``): the last
            convolutional block, with output (batch, h, w, channels).
        scorecam_max_n: Faster-Score-CAM keeps this many feature maps (capped at the number of
            channels of the target layer).
        feature_layer: optional layer whose output (globally averaged if spatial) the compiled
            function also returns, from the same forward pass: the OOD guard's features
            (``ModelSpec.feature_layer``) then cost no second pass through the network.
        smoothgrad_samples: noisy copies of the image SmoothGrad averages (its cost is one
            forward and backward pass of the network per copy).
        smoothgrad_noise: SmoothGrad's noise standard deviation as a share of the image's value
            range; 0 gives the plain gradient map (vanilla saliency) of the image itself.

    Attributes:
        model, layer_name, input_shape, num_classes, scorecam_max_n, smoothgrad_samples,
        smoothgrad_noise: as given / as found.
        logits_model: the logits twin (same layers and weights, no final softmax), e.g. for
            running tf-keras-vis on the same score.

    Raises:
        ExplainerError: the model or the layer does not fit the description above.

    Inputs to :meth:`predict` and :meth:`explain` are single already-normalised images, float
    arrays shaped like the model input, e.g. (224, 224, 3) (see ``preprocessing.py``).
    Results are deterministic: the same input gives identical probabilities and heatmaps
    (SmoothGrad's noise is seeded).
    Thread counts are the app's business: nothing here sets them.
    """

    def __init__(
        self,
        model: keras.Model,
        layer_name: str,
        *,
        scorecam_max_n: int = DEFAULT_SCORECAM_MAX_N,
        feature_layer: str | None = None,
        smoothgrad_samples: int = DEFAULT_SMOOTHGRAD_SAMPLES,
        smoothgrad_noise: float = DEFAULT_SMOOTHGRAD_NOISE,
    ):
        _import_tensorflow()
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ExplainerError(
                f"Expected a model with 1 input and 1 output, got {len(model.inputs)} inputs and "
                f"{len(model.outputs)} outputs."
            )
        input_shape = tuple(model.inputs[0].shape[1:])
        if len(input_shape) != 3 or any(d is None for d in input_shape):
            raise ExplainerError(
                f"Expected a fixed (height, width, channels) model input, got {input_shape}."
            )
        head = model.layers[-1]
        if (
            not isinstance(head, keras.layers.Dense)
            or keras.activations.serialize(head.activation) != "softmax"
        ):
            raise ExplainerError(
                f"The model's last layer must be Dense(n, activation='softmax') so that class logits can "
                f"be scored; got {type(head).__name__} {head.name!r}."
            )
        try:
            target = model.get_layer(layer_name)
        except ValueError:
            candidates = [
                layer.name for layer in model.layers if len(getattr(layer.output, "shape", ())) == 4
            ]
            raise ExplainerError(
                f"Layer {layer_name!r} is not in model {model.name!r}; layers with a spatial output, "
                f"last ones: {candidates[-5:]}."
            ) from None
        if len(target.output.shape) != 4:
            raise ExplainerError(
                f"The Grad-CAM layer must output (batch, height, width, channels); {layer_name!r} outputs "
                f"{tuple(target.output.shape)}."
            )
        if scorecam_max_n < 1:
            raise ExplainerError(f"scorecam_max_n must be at least 1, got {scorecam_max_n}.")
        if feature_layer is not None and feature_layer not in {layer.name for layer in model.layers}:
            raise ExplainerError(f"Feature layer {feature_layer!r} is not in model {model.name!r}.")
        if int(smoothgrad_samples) < 1:
            raise ExplainerError(f"smoothgrad_samples must be at least 1, got {smoothgrad_samples}.")
        if not (np.isfinite(smoothgrad_noise) and smoothgrad_noise >= 0):
            raise ExplainerError(f"smoothgrad_noise must be finite and >= 0, got {smoothgrad_noise}.")

        self.model = model
        self.layer_name = layer_name
        self.input_shape: tuple[int, int, int] = input_shape  # type: ignore[assignment]
        self.num_classes: int = int(head.units)
        self.scorecam_max_n = min(int(scorecam_max_n), int(target.output.shape[-1]))
        self.smoothgrad_samples = int(smoothgrad_samples)
        self.smoothgrad_noise = float(smoothgrad_noise)
        # tf-keras-vis's Saliency on the logits twin, built on first SmoothGrad request.
        self._saliency = None

        logits = _logits_head_class()(head, name=f"{head.name}_logits")(head.input)
        # The logits twin: the same layers and weights, final softmax removed (see module docstring).
        self.logits_model = keras.Model(model.inputs[0], logits, name=f"{model.name}_logits")
        # The same twin declared with a one-element input list: tf-keras-vis calls models with a
        # list of inputs, which a single-input functional model accepts only with a warning.
        self._listed_logits_model = keras.Model([model.inputs[0]], logits, name=f"{model.name}_logits_listed")
        # One graph for probabilities and CAM: target-layer activations and class logits together.
        self._features = keras.Model(model.inputs[0], [target.output, logits], name=f"{model.name}_cam")
        self.feature_layer = feature_layer
        extra = [model.get_layer(feature_layer).output] if feature_layer else []
        self._interactive_model = keras.Model(
            model.inputs[0], [target.output, logits, *extra], name=f"{model.name}_cam_features"
        )

        # One compiled function (fixed input signature, traced once) serves `predict` and both
        # gradient methods: see the module docstring.
        signature = [tf.TensorSpec((1, *input_shape), tf.float32), tf.TensorSpec((), tf.int32)]
        self._interactive = tf.function(self._interactive_impl, input_signature=signature)
        # Probabilities (and guard features) alone: the forward pass without the gradient tape,
        # CAM arithmetic or upsampling (`predict`, `analyse(x, None)`: the API's path).
        self._forward = tf.function(self._forward_impl, input_signature=signature[:1])

        # Score-CAM: one more compiled function, traced on its first use (rarely asked for, and a
        # DenseNet121 trace costs seconds of start-up). The network runs in it twice, on the image
        # and on the masked images, through one nested function with a free batch size: one trace.
        batch_signature = [tf.TensorSpec((None, *input_shape), tf.float32)]
        self._batched_features = tf.function(
            lambda x: self._features(x, training=False), input_signature=batch_signature
        )
        self._scorecam = tf.function(self._scorecam_impl, input_signature=signature)

    # ------------------------------------------------------------------ compiled graph body
    @staticmethod
    def _pooled_features(extra: list) -> tf.Tensor:
        """The `feature_layer` output as one vector (spatial maps averaged); (0,) without one."""
        if not extra:
            return tf.zeros((0,), tf.float32)
        features = tf.cast(extra[0], tf.float32)
        if len(features.shape) == 4:  # feature maps: one value per channel
            features = tf.reduce_mean(features, axis=(1, 2))
        return tf.reshape(features, (-1,))

    def _forward_impl(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(probabilities, features) from the same graph as `_interactive_impl`, forward only."""
        _, logits, *extra = self._interactive_model(x, training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32))[0], self._pooled_features(extra)

    def _interactive_impl(self, x: tf.Tensor, class_index: tf.Tensor) -> _InteractiveResult:
        # Watching the input records the whole forward pass, so the gradient reaches the target
        # layer even when its weights are frozen (CheXNet's DenseNet base is not trainable).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            activations, logits, *extra = self._interactive_model(x, training=False)
            logits = tf.cast(logits, tf.float32)
            # A negative class index means "the predicted class".
            target = tf.where(class_index < 0, tf.argmax(logits[0], output_type=tf.int32), class_index)
            score = tf.gather(logits[0], target)
        grads = tf.cast(tape.gradient(score, activations), tf.float32)
        activations = tf.cast(activations, tf.float32)
        features = self._pooled_features(extra)
        return _InteractiveResult(
            tf.nn.softmax(logits)[0],
            self._cam_from(grads, activations, score, _gradcam_weights),
            self._cam_from(grads, activations, score, _gradcam_plus_plus_weights),
            features,
        )

    def _cam_from(self, grads: tf.Tensor, activations: tf.Tensor, score: tf.Tensor, weights_fn) -> _CamResult:
        """One CAM from the shared gradients: channel weights, weighted sum, ReLU, [0, 1] maps."""
        weights = weights_fn(grads, activations, score)
        # Only features with a positive influence on the class are of interest (the ReLU).
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0]
        # Grad-CAM++'s alphas can overflow (see above): a non-finite map carries no information.
        cam = tf.where(tf.reduce_all(tf.math.is_finite(cam)), cam, tf.zeros_like(cam))
        cam_layer = _minmax(cam)
        heatmap = tf.image.resize(cam_layer[..., None], self.input_shape[:2], method="bilinear")[..., 0]
        return _CamResult(cam_layer, _minmax(heatmap))

    def _scorecam_impl(self, x: tf.Tensor, class_index: tf.Tensor) -> tuple[tf.Tensor, _CamResult]:
        """Faster-Score-CAM, step by step as tf-keras-vis's ``Scorecam(max_N=...)`` computes it.

        Each of the `scorecam_max_n` feature maps with the largest spatial spread becomes a mask
        (upsampled bilinearly with aligned corners, as scipy's zoom(order=1) does, and scaled to
        [0, 1]); the map's weight is the softmax probability of the class for the masked image.
        """
        activations, logits = self._batched_features(x)
        logits = tf.cast(logits, tf.float32)
        target = tf.where(class_index < 0, tf.argmax(logits[0], output_type=tf.int32), class_index)
        activations = tf.cast(activations, tf.float32)
        # Faster-Score-CAM: only the maps with the largest spatial standard deviation.
        spread = tf.math.reduce_std(activations, axis=(1, 2))[0]
        _, top = tf.math.top_k(spread, self.scorecam_max_n)
        maps = tf.gather(activations, top, axis=-1)  # (1, h, w, N)
        upsampled = _resize_aligned(maps, self.input_shape[:2])
        low = tf.reduce_min(upsampled, axis=(1, 2), keepdims=True)
        high = tf.reduce_max(upsampled, axis=(1, 2), keepdims=True)
        masks = (upsampled - low) / (high - low + keras.config.epsilon())
        # (1, H, W, N) -> (N, H, W, 1): one masked copy of the image per map, all channels alike.
        masked = x * tf.transpose(masks, (3, 1, 2, 0))
        _, masked_logits = self._batched_features(masked)
        weights = tf.gather(tf.nn.softmax(tf.cast(masked_logits, tf.float32)), target, axis=1)  # (N,)
        cam = tf.nn.relu(tf.tensordot(maps[0], weights, axes=[[2], [0]]))  # (h, w)
        heatmap = _resize_aligned(cam[None, ..., None], self.input_shape[:2])[0, ..., 0]
        return tf.nn.softmax(logits)[0], _CamResult(_minmax(cam), _minmax(heatmap))

    def _smoothgrad(self, batch: tf.Tensor, class_index: int) -> np.ndarray:
        """SmoothGrad of one class logit by tf-keras-vis: (H, W) float32 map in [0, 1].

        tf-keras-vis's ``Saliency(smooth_samples=k)`` on a batch of ``b`` copies of the image
        (``b * k = smoothgrad_samples``, ``b`` at most SMOOTHGRAD_MAX_BATCH) adds independent
        noise to each of the ``b * k`` copies, passes ``b`` of them through the network at a
        time and averages |d logit / d pixel| over its ``k`` passes; averaging its ``b`` maps
        then gives the mean over all copies: the same map as ``smooth_samples=b * k`` on the
        single image with the same noise draws, in fewer, larger network calls. The
        channel-wise maximum (tf-keras-vis's ``keepdims=False``) is taken last, and the map is
        scaled to [0, 1] like the CAMs (a constant map, e.g. zero gradients, becomes zeros).
        """
        if self._saliency is None:
            from tf_keras_vis.saliency import Saliency

            self._saliency = Saliency(self._listed_logits_model, clone=False)
        from tf_keras_vis.utils.scores import CategoricalScore

        copies = _largest_divisor_at_most(self.smoothgrad_samples, SMOOTHGRAD_MAX_BATCH)
        passes = self.smoothgrad_samples // copies
        seeds = tf.repeat(batch, copies, axis=0)
        with _seeded_global_numpy_rng(SMOOTHGRAD_SEED):
            grads = self._saliency(
                CategoricalScore([int(class_index)] * copies),
                seeds,
                smooth_samples=passes,
                smooth_noise=self.smoothgrad_noise,
                keepdims=True,
                normalize_map=False,
            )
        saliency = np.asarray(grads, np.float64).mean(axis=0).max(axis=-1)  # (H, W)
        if not np.all(np.isfinite(saliency)):
            return np.zeros(saliency.shape, np.float32)
        low, span = saliency.min(), saliency.max() - saliency.min()
        if span <= 0:
            return np.zeros(saliency.shape, np.float32)
        return ((saliency - low) / span).astype(np.float32)

    # ------------------------------------------------------------------ public API
    def warm_up(self, methods: tuple[str, ...] = METHODS) -> None:
        """Trace the compiled functions behind `methods` once, on a blank image.

        The forward pass (`predict`, `analyse(x, None)`) is always traced. Grad-CAM and Grad-CAM++
        share one compiled function: warming either warms both. Score-CAM (traced on first use
        otherwise) is warmed only when listed. SmoothGrad runs eagerly (nothing to trace); when
        listed, one call imports tf-keras-vis and sets up the network's batched kernels.
        """
        blank = np.zeros(self.input_shape, np.float32)
        self.predict(blank)
        if "gradcam" in methods or "gradcam++" in methods:
            self.explain(blank, "gradcam")
        if "scorecam" in methods:
            self.explain(blank, "scorecam")
        if "smoothgrad" in methods:
            self.explain(blank, "smoothgrad")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (num_classes,), from the compiled forward pass."""
        return self._forward(self._as_batch(x))[0].numpy()

    def analyse(
        self, x: np.ndarray, method: str | None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Probabilities, the heatmap of the predicted class (None when `method` is None) and the
        `feature_layer` features (None without a feature layer, or for Score-CAM, whose compiled
        function does not compute them), from one call of the compiled function (SmoothGrad: the
        compiled forward pass, then tf-keras-vis).

        Raises:
            ExplainerError: as :meth:`explain`.
        """
        if method == "scorecam":
            probs, heatmap = self.explain(x, method)
            return probs, heatmap, None
        if method is None or method in SALIENCY_METHODS:
            # A plain forward pass for the probabilities (and the class SmoothGrad explains).
            batch = self._as_batch(x)
            probs, features = self._forward(batch)
            probs = probs.numpy()
            heatmap = None if method is None else self._smoothgrad(batch, int(np.argmax(probs)))
            return probs, heatmap, (features.numpy() if self.feature_layer else None)
        _check_method(method)
        result = self._interactive(self._as_batch(x), tf.constant(-1, tf.int32))
        heatmap = _gradient_cam(result, method).heatmap.numpy()
        features = result.features.numpy() if self.feature_layer else None
        return result.probs.numpy(), heatmap, features

    def explain(
        self,
        x: np.ndarray,
        method: str = "gradcam",
        class_index: int | None = None,
        *,
        upsample: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and a heatmap of the evidence for one class.

        Args:
            x: one normalised image shaped like the model input, e.g. (224, 224, 3).
            method: one of :data:`SERVED_METHODS`.
            class_index: class to explain; ``None`` explains the predicted class.
            upsample: ``True`` (default) returns the heatmap at the input resolution (H, W);
                ``False`` at the target layer's resolution (h, w), as the tests compare it with
                tf-keras-vis before any upsampling. SmoothGrad's map is a pixel map: always
                (H, W).

        Returns:
            ``(probs, heatmap)``: probabilities (num_classes,) float32 and a float32 heatmap in
            [0, 1]. A map without positive evidence is all zeros.

        Raises:
            ExplainerError: unknown method, class index out of range, or wrong input shape.
        """
        _check_method(method)
        if class_index is not None and not 0 <= int(class_index) < self.num_classes:
            raise ExplainerError(f"class_index must be in [0, {self.num_classes - 1}], got {class_index}.")
        batch = self._as_batch(x)
        target = tf.constant(-1 if class_index is None else int(class_index), tf.int32)
        if method in SALIENCY_METHODS:
            probs = self._forward(batch)[0].numpy()
            explained = int(np.argmax(probs)) if class_index is None else int(class_index)
            return probs, self._smoothgrad(batch, explained)
        if method == "scorecam":
            probs, cam = self._scorecam(batch, target)
        else:
            result = self._interactive(batch, target)
            probs, cam = result.probs, _gradient_cam(result, method)
        heatmap = cam.heatmap if upsample else cam.cam_layer
        return probs.numpy(), heatmap.numpy()

    # ------------------------------------------------------------------ helpers
    def _as_batch(self, x: np.ndarray) -> tf.Tensor:
        array = np.asarray(x, dtype=np.float32)
        if array.shape == (1, *self.input_shape):
            array = array[0]
        if array.shape != self.input_shape:
            raise ExplainerError(
                f"Expected one normalised image of shape {self.input_shape}, got {array.shape}."
            )
        if not np.all(np.isfinite(array)):
            raise ExplainerError("The image contains NaN or infinite values.")
        return tf.constant(array[None])


# ---------------------------------------------------------------------------
# Overlay.
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _colormap_lut() -> np.ndarray:
    """The jet colour map as a (256, 3) uint8 RGB lookup table, computed once."""
    import matplotlib

    colors = matplotlib.colormaps[COLORMAP_NAME](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.rint(colors * 255.0).astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"Expected a uint8 image array, got {getattr(image, 'dtype', type(image))}.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"Expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}.")
    if image.shape[2] == 1:  # grayscale X-ray: same intensity on the three channels
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _colorbar_layout(height: int) -> tuple[int, int, bool, float, int]:
    """(strip width, bar width, labelled, font scale, thickness) of the scale beside an image this tall."""
    bar_width = max(6, round(0.04 * height))
    labelled = height >= MIN_COLORBAR_LABEL_SIDE
    scale = float(np.clip(height / 700.0, 0.3, 1.0))
    thickness = 1 if scale < 0.7 else 2
    text_width = 0
    if labelled:
        text_width = max(
            cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
            for label in ("high", "low")
        )
    margin = max(3, round(0.02 * height))
    return 2 * margin + max(bar_width, text_width), bar_width, labelled, scale, thickness


def colorbar_width(height: int, width: int) -> int:
    """Width in pixels of the scale strip `render_overlay` appends to an image of this size (0: none)."""
    return _colorbar_layout(height)[0] if min(height, width) >= MIN_COLORBAR_SIDE else 0


def _colorbar_strip(height: int) -> np.ndarray:
    """A white strip with a vertical colour scale (high at the top) and "high"/"low" labels."""
    strip_width, bar_width, labelled, scale, thickness = _colorbar_layout(height)
    strip = np.empty((height, strip_width, 3), np.uint8)
    strip[:] = COLORBAR_BACKGROUND
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_height = cv2.getTextSize("high", font, scale, thickness)[0][1] if labelled else 0
    pad = max(3, round(0.02 * height))
    top = pad + (text_height + pad if labelled else 0)
    bar_height = max(8, height - 2 * top)
    top = (height - bar_height) // 2
    left = (strip_width - bar_width) // 2
    ramp = np.rint(np.linspace(255, 0, bar_height)).astype(np.uint8)
    strip[top : top + bar_height, left : left + bar_width] = _colormap_lut()[ramp][:, None, :]
    cv2.rectangle(strip, (left - 1, top - 1), (left + bar_width, top + bar_height), (96, 96, 96), 1)
    if labelled:
        for label, y in (("high", top - pad), ("low", top + bar_height + pad + text_height)):
            text_w = cv2.getTextSize(label, font, scale, thickness)[0][0]
            origin = ((strip_width - text_w) // 2, y)
            cv2.putText(strip, label, origin, font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def render_overlay(
    rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colorbar: bool = True
) -> np.ndarray:
    """Blend a heatmap in jet colours over the original display image.

    Args:
        rgb: the ORIGINAL display image, any size, uint8 RGB (grayscale HxW / HxWx1 and RGBA are
            accepted too).
        heatmap: 2-D map in [0, 1] (values outside are clipped), any size; it is resized
            bilinearly to the image size.
        alpha: heatmap opacity in [0, 1]. 0 returns the image unchanged (and no colour bar:
            nothing is overlaid, so there is nothing to read off a scale).
        colorbar: append a narrow white strip to the RIGHT of the image holding a vertical
            colour scale (high at the top, low at the bottom, labelled on images at least 160
            pixels tall), so the scale never covers any of the image; skipped on images smaller
            than 48 pixels on a side.

    Returns:
        uint8 RGB array (H, W + colorbar_width(H, W), 3): the blended image, unchanged in size
        and position, plus the scale strip when one is drawn (without one, exactly (H, W, 3)).
    """
    image = _as_rgb(rgb)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"Expected a 2-D heatmap, got shape {heat.shape}.")
    if float(alpha) == 0.0:
        return image.copy()
    height, width = image.shape[:2]
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    levels = np.rint(np.clip(heat, 0.0, 1.0) * 255.0).astype(np.uint8)
    # Colour lookup with OpenCV (each channel through its own column of the table): the same
    # colours as indexing the table with NumPy, about 6x faster on a 512x512 display image.
    colored = cv2.LUT(cv2.merge([levels, levels, levels]), _colormap_lut()[:, None, :])
    out = cv2.addWeighted(image, 1.0 - float(alpha), colored, float(alpha), 0.0)
    if colorbar and colorbar_width(height, width):
        out = np.concatenate([out, _colorbar_strip(height)], axis=1)
    return out


def heatmap_notes(heatmap: np.ndarray) -> list[str]:
    """Short sentences for people about what a heatmap can and cannot show (may be empty).

    - FLAT_MAP_NOTE when the map is nearly uniform (pixel std <= FLAT_MAP_STD_MAX, values in [0, 1]);
    - BORDER_MAP_NOTE when more than BORDER_NOTE_MIN of its mass lies in the border band, by the
      one border-mass definition of the faithfulness report (`faithfulness.border_mass`);
    - else BELOW_LUNGS_NOTE or OUTSIDE_CHEST_NOTE when more than BELOW_LUNGS_NOTE_MIN of its mass
      lies below the lungs, or more than OUTSIDE_CHEST_NOTE_MIN outside the chest box (the regions
      of the what-if probe, `probe.region_share`). One note at most: the most specific.

    Args:
        heatmap: 2-D map in [0, 1] (values outside are clipped), any size.
    """
    from covid_xray.faithfulness import border_mass

    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"Expected a 2-D heatmap, got shape {heat.shape}.")
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    if float(heat.std()) <= FLAT_MAP_STD_MAX:
        return [FLAT_MAP_NOTE]
    from covid_xray.probe import region_share

    mass = border_mass(heat)
    if not np.isfinite(mass):
        return []
    if mass > BORDER_NOTE_MIN:
        return [BORDER_MAP_NOTE]
    if region_share(heat, "below_lungs") > BELOW_LUNGS_NOTE_MIN:
        return [BELOW_LUNGS_NOTE]
    if region_share(heat, "outside_chest") > OUTSIDE_CHEST_NOTE_MIN:
        return [OUTSIDE_CHEST_NOTE]
    return []
