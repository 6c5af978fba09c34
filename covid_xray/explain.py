"""Visual explanations: compiled Grad-CAM / Grad-CAM++, tf-keras-vis Score-CAM, heatmap overlay.

The app explains one image per request on a small CPU, so an :class:`Explainer` is built once
per model at start-up, warmed (every compiled function traced once with its fixed input
signature), and reused. Grad-CAM and Grad-CAM++ each run as ONE compiled ``tf.function`` that
computes the class probabilities and the heatmap together (one forward, one partial backward
pass); Score-CAM is tf-keras-vis's Faster-Score-CAM, built once.

Score choice. Both models end in ``Dense(n, softmax)``. The gradient of a softmax probability
vanishes when the model is confident (p -> 1), which gives empty maps exactly on the clearest
cases, so, as in the Grad-CAM paper, the score is the pre-softmax logit of the target class.
A *logits twin* of the model (the same graph and weights, the final Dense without its softmax)
gives these logits; the probabilities are ``softmax(logits)``, identical to the model's output.

tf-keras-vis is the reference implementation: the tests check that our compiled Grad-CAM and
Grad-CAM++ match its ``Gradcam`` and ``GradcamPlusPlus`` on the same logits twin.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import NamedTuple

import cv2
import keras
import numpy as np
import tensorflow as tf
from keras import ops

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam")
# Faster-Score-CAM keeps only this many feature maps (those with the largest spatial variance).
# Its cost is one batched forward pass of this many masked images per request: linear in it.
DEFAULT_SCORECAM_MAX_N = 16
# Colour map of the overlay (blue = low, red = high), as in the Grad-CAM literature.
COLORMAP_NAME = "jet"
# Images smaller than this (either side) get no colour bar: there is no room for a legible one.
MIN_COLORBAR_SIDE = 48
# Colour-bar labels are drawn only on images at least this tall.
MIN_COLORBAR_LABEL_SIDE = 160


class ExplainerError(ValueError):
    """The model or the request cannot be explained; the message is meant for people."""


class _CamResult(NamedTuple):
    probs: tf.Tensor  # (num_classes,)
    cam_layer: tf.Tensor  # (h, w) at the target layer's resolution, normalised to [0, 1]
    heatmap: tf.Tensor  # (H, W) at the input resolution, normalised to [0, 1]


class _LogitsHead(keras.layers.Layer):
    """The classifier's final Dense layer without its softmax, sharing its weights.

    Sharing (instead of copying) keeps the logits twin in step with the model if its weights change.
    """

    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, inputs):
        logits = ops.matmul(inputs, self.dense.kernel)
        if self.dense.use_bias:
            logits = ops.add(logits, self.dense.bias)
        return logits


class _CompiledStage(keras.layers.Layer):
    """A sub-model run as one compiled function (any batch size), so even an eager call is fast."""

    def __init__(self, submodel: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.submodel = submodel
        spec = tf.TensorSpec((None, *submodel.inputs[0].shape[1:]), tf.float32)
        self._compiled = tf.function(
            lambda x: submodel(x, training=False), input_signature=[spec], reduce_retracing=True
        )

    def call(self, inputs):
        return self._compiled(tf.cast(inputs, tf.float32))

    def compute_output_spec(self, inputs):
        return self.submodel.compute_output_spec(inputs)


def _build_scorecam_model(logits_model: keras.Model, target: keras.layers.Layer) -> keras.Model:
    """The model handed to tf-keras-vis's Score-CAM: the logits twin, in two compiled stages if possible.

    On every request tf-keras-vis builds a model from the input to the target layer and calls it
    EAGERLY (about as slow as a whole eager DenseNet121), then predicts the masked images. When
    the graph after the target layer reads the target layer only (DavidNet, CheXNet), the same
    network is rebuilt as two compiled stages, input -> target activations (a layer named like
    the target, so tf-keras-vis finds it) -> logits, so that eager call runs compiled code.
    With a skip connection around the target layer the logits twin is used as it is (slower).
    """
    name = logits_model.name
    try:
        head = keras.Model(target.output, logits_model.output, name=f"{name}_head")
    except ValueError:
        logger.info(
            "Score-CAM on %s runs eagerly: layers after %r read earlier layers too.", name, target.name
        )
        return logits_model
    features = keras.Model(logits_model.inputs[0], target.output, name=f"{name}_features")
    image = keras.Input(shape=tuple(logits_model.inputs[0].shape[1:]), name="image")
    activations = _CompiledStage(features, name=target.name)(image)
    logits = _CompiledStage(head, name=f"{name}_head")(activations)
    return keras.Model(image, logits, name=f"{name}_scorecam")


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

    Attributes:
        model, layer_name, input_shape, num_classes, scorecam_max_n: as given / as found.
        logits_model: the logits twin (same layers and weights, no final softmax), e.g. for
            running tf-keras-vis on the same score.

    Raises:
        ExplainerError: the model or the layer does not fit the description above.

    Inputs to :meth:`predict` and :meth:`explain` are single already-normalised images, float
    arrays shaped like the model input, e.g. (224, 224, 3) (see ``preprocessing.py``).
    Results are deterministic: the same input gives identical probabilities and heatmaps.
    Thread counts are the app's business: nothing here sets them.
    """

    def __init__(self, model: keras.Model, layer_name: str, *, scorecam_max_n: int = DEFAULT_SCORECAM_MAX_N):
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

        self.model = model
        self.layer_name = layer_name
        self.input_shape: tuple[int, int, int] = input_shape  # type: ignore[assignment]
        self.num_classes: int = int(head.units)
        self.scorecam_max_n = min(int(scorecam_max_n), int(target.output.shape[-1]))

        logits = _LogitsHead(head, name=f"{head.name}_logits")(head.input)
        # The logits twin: the same layers and weights, final softmax removed (see module docstring).
        self.logits_model = keras.Model(model.inputs[0], logits, name=f"{model.name}_logits")
        # One graph for probabilities and CAM: target-layer activations and class logits together.
        self._features = keras.Model(model.inputs[0], [target.output, logits], name=f"{model.name}_cam")

        signature = [tf.TensorSpec((1, *input_shape), tf.float32)]
        cam_signature = [*signature, tf.TensorSpec((), tf.int32)]
        self._forward = tf.function(self._forward_impl, input_signature=signature, reduce_retracing=True)
        self._cams = {
            "gradcam": tf.function(
                functools.partial(self._cam_impl, weights_fn=_gradcam_weights),
                input_signature=cam_signature,
                reduce_retracing=True,
            ),
            "gradcam++": tf.function(
                functools.partial(self._cam_impl, weights_fn=_gradcam_plus_plus_weights),
                input_signature=cam_signature,
                reduce_retracing=True,
            ),
        }

        from tf_keras_vis.scorecam import Scorecam

        # Score-CAM weights each feature map by softmax(logits of the masked image); tf-keras-vis
        # applies that softmax itself, so it gets the logits twin (given the softmax model it would
        # take the softmax of probabilities). No model modifier: nothing is cloned.
        scorecam_model = _build_scorecam_model(self.logits_model, target)
        self._scorecam = Scorecam(scorecam_model, clone=False)
        # tf-keras-vis predicts the masked images with `model.predict`; Keras' version builds a
        # tf.data pipeline and prints a progress bar on every request. On our own Score-CAM model
        # it is replaced by one compiled batched forward pass (same outputs).
        self._masked_forward = tf.function(
            lambda x: scorecam_model(x, training=False),
            input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)],
            reduce_retracing=True,
        )
        scorecam_model.predict = self._predict_masked
        # One Score-CAM at a time: tf-keras-vis builds a model on each call.
        self._scorecam_lock = threading.Lock()

    # ------------------------------------------------------------------ compiled graph bodies
    def _forward_impl(self, x: tf.Tensor) -> tf.Tensor:
        _, logits = self._features(x, training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32))[0]

    def _cam_impl(self, x: tf.Tensor, class_index: tf.Tensor, *, weights_fn) -> _CamResult:
        # Watching the input records the whole forward pass, so the gradient reaches the target
        # layer even when its weights are frozen (CheXNet's DenseNet base is not trainable).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            activations, logits = self._features(x, training=False)
            logits = tf.cast(logits, tf.float32)
            # A negative class index means "the predicted class".
            target = tf.where(class_index < 0, tf.argmax(logits[0], output_type=tf.int32), class_index)
            score = tf.gather(logits[0], target)
        grads = tf.cast(tape.gradient(score, activations), tf.float32)
        activations = tf.cast(activations, tf.float32)
        weights = weights_fn(grads, activations, score)
        # Only features with a positive influence on the class are of interest (the ReLU).
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0]
        # Grad-CAM++'s alphas can overflow (see above): a non-finite map carries no information.
        cam = tf.where(tf.reduce_all(tf.math.is_finite(cam)), cam, tf.zeros_like(cam))
        cam_layer = _minmax(cam)
        heatmap = tf.image.resize(cam_layer[..., None], self.input_shape[:2], method="bilinear")[..., 0]
        return _CamResult(tf.nn.softmax(logits)[0], cam_layer, _minmax(heatmap))

    # ------------------------------------------------------------------ public API
    def warm_up(self, methods: tuple[str, ...] = METHODS) -> None:
        """Trace every compiled function (and Score-CAM's predict) once, on a blank image."""
        blank = np.zeros(self.input_shape, np.float32)
        self.predict(blank)
        for method in methods:
            self.explain(blank, method)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (num_classes,), from the compiled forward pass only."""
        return self._forward(self._as_batch(x)).numpy()

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
            method: one of :data:`METHODS`.
            class_index: class to explain; ``None`` explains the predicted class.
            upsample: ``True`` (default) returns the heatmap at the input resolution (H, W);
                ``False`` at the target layer's resolution (h, w), as the tests compare it with
                tf-keras-vis before any upsampling.

        Returns:
            ``(probs, heatmap)``: probabilities (num_classes,) float32 and a float32 heatmap in
            [0, 1]. A map without positive evidence is all zeros.

        Raises:
            ExplainerError: unknown method, class index out of range, or wrong input shape.
        """
        if method not in METHODS:
            raise ExplainerError(f"Unknown explanation method {method!r}; expected one of {METHODS}.")
        if class_index is not None and not 0 <= int(class_index) < self.num_classes:
            raise ExplainerError(f"class_index must be in [0, {self.num_classes - 1}], got {class_index}.")
        batch = self._as_batch(x)
        if method == "scorecam":
            return self._explain_scorecam(batch, class_index, upsample)
        target = tf.constant(-1 if class_index is None else int(class_index), tf.int32)
        result = self._cams[method](batch, target)
        heatmap = result.heatmap if upsample else result.cam_layer
        return result.probs.numpy(), heatmap.numpy()

    # ------------------------------------------------------------------ helpers
    def _predict_masked(self, inputs, batch_size: int = 32, **_) -> np.ndarray:
        """``Model.predict`` stand-in for Score-CAM: logits of the masked images, batch by batch."""
        if isinstance(inputs, (list, tuple)):
            (inputs,) = inputs
        batches = [
            self._masked_forward(tf.constant(inputs[i : i + batch_size], tf.float32)).numpy()
            for i in range(0, len(inputs), batch_size)
        ]
        return np.concatenate(batches)

    def _explain_scorecam(
        self, batch: tf.Tensor, class_index: int | None, upsample: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        from tf_keras_vis.utils.scores import CategoricalScore

        probs = self._forward(batch).numpy()
        target = int(np.argmax(probs)) if class_index is None else int(class_index)
        with self._scorecam_lock:
            cam = self._scorecam(
                CategoricalScore(target),
                batch,
                penultimate_layer=self.layer_name,
                seek_penultimate_conv_layer=False,
                max_N=self.scorecam_max_n,
                batch_size=self.scorecam_max_n,
                expand_cam=upsample,
                normalize_cam=False,
            )
        cam = np.asarray(cam, np.float32).reshape(np.shape(cam)[-2:])
        return probs, _minmax(tf.constant(cam)).numpy()

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


def _draw_colorbar(canvas: np.ndarray) -> None:
    """Draw a slim vertical colour scale (high at the top) inside the image's right margin."""
    height, width = canvas.shape[:2]
    bar_width = max(4, round(0.025 * width))
    margin = max(3, round(0.02 * width))
    bar_height = max(8, round(0.5 * height))
    top = (height - bar_height) // 2
    left = width - margin - bar_width
    ramp = np.rint(np.linspace(255, 0, bar_height)).astype(np.uint8)
    canvas[top : top + bar_height, left : left + bar_width] = _colormap_lut()[ramp][:, None, :]
    # A 1-pixel white frame keeps the scale readable on dark and bright X-ray backgrounds alike.
    cv2.rectangle(canvas, (left - 1, top - 1), (left + bar_width, top + bar_height), (255, 255, 255), 1)
    if height < MIN_COLORBAR_LABEL_SIDE:
        return
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, float(np.clip(height / 700.0, 0.3, 1.0))
    thickness = 1 if scale < 0.7 else 2
    for label, baseline_y in (("high", top - 4), ("low", top + bar_height + 4)):
        (text_w, text_h), _ = cv2.getTextSize(label, font, scale, thickness)
        origin = (left + bar_width - text_w, baseline_y if label == "high" else baseline_y + text_h)
        cv2.putText(canvas, label, origin, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(canvas, label, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


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
        colorbar: draw a slim vertical colour scale (low at the bottom, high at the top) INSIDE
            the image's right margin; skipped on images smaller than 48 pixels on a side.

    Returns:
        uint8 RGB array of exactly the input image's size, (H, W, 3): the colour bar is drawn
        inside the image, never appended.
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
    colored = _colormap_lut()[np.rint(np.clip(heat, 0.0, 1.0) * 255.0).astype(np.uint8)]
    out = cv2.addWeighted(image, 1.0 - float(alpha), colored, float(alpha), 0.0)
    if colorbar and min(height, width) >= MIN_COLORBAR_SIDE:
        _draw_colorbar(out)
    return out
