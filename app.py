"""Gradio app: DavidNet and CheXNet side by side with Grad-CAM, an error gallery and a model report.

    python app.py        # serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (default 127.0.0.1:7860)

This file only lays out the UI and wires events. The page is served at once; models load, and
first-start provisioning brings what is missing, in the background (`covid_xray.runtime`), and a
`gr.Timer` brings each change to the page without a reload. Predictions and explanations come
from `covid_xray.inference.Predictor`, everything read from disk from `covid_xray.report`.
Importing this file loads no model: `create_app()` (or `build_demo(runtime)` in tests) does.

API: `predict` takes one image file (JPEG, PNG, ..., DICOM) and returns JSON
`{"davidnet": {"available": true, "prediction": "Covid", "probabilities": {...}},
"chexnet": {"available": false, "state": "preparing", "message": "...", "detail": "..."},
"input_check": {"is_xray_likely": false, "warnings": ["The image is in colour ..."]}}`;
`message` is for people, `detail` for operators (no server paths in either); `input_check` is the
OOD guard (`covid_xray.ood`): it warns, it never refuses an image.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from covid_xray import config, quiz, report, teaching
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS
from covid_xray.imaging import ImageDecodeError
from covid_xray.inference import (
    DEFAULT_ALPHA,
    DEFAULT_METHOD,
    METHOD_DISPLAY_NAMES,
    PredictionResult,
    detail_markdown,
)
from covid_xray.runtime import READY, AppRuntime

logger = logging.getLogger("covid_xray.app")

TITLE = "COVID-19 chest X-ray classifier: DavidNet vs CheXNet, with Grad-CAM"
NOTICE = (
    "**For research and teaching only. Not for diagnosis.** Both models were trained on 251 images "
    "of a small public dataset with known shortcuts (children vs adults, duplicated images); do not "
    "use their output for any decision about a patient."
)
PAPER_URL = "https://arxiv.org/abs/2004.05138"
DATASET_URL = "https://www.kaggle.com/datasets/pranavraikokte/covid19-image-dataset"
CHEXNET_URL = "https://stanfordmlgroup.github.io/projects/chexnet/"
ABOUT_MARKDOWN = (
    "## About\n\n"
    "Two TensorFlow models classify a frontal chest X-ray as Normal, Viral Pneumonia or COVID-19, as in "
    f"[*Convolutional Neural Networks for COVID-19 Diagnosis*]({PAPER_URL}), trained on the "
    f"[Kaggle COVID-19 image dataset]({DATASET_URL}) (317 images):\n\n"
    "- **DavidNet** is the paper's small CNN (5,575,011 parameters), trained from scratch here on the "
    "251 training images. It is fast and small, and has seen nothing but this dataset.\n"
    f"- **CheXNet** is DenseNet121 carrying the [CheXNet]({CHEXNET_URL}) weights (trained on 112,120 "
    "chest X-rays of ChestX-ray14 for 14 findings), with a small head trained here for the three classes.\n\n"
    "Heatmaps (Grad-CAM, Grad-CAM++, Score-CAM, SmoothGrad) show where the model looked: red marks the "
    "pixels with the most influence on the class shown, which is not always the disease (text "
    "markers and the image border are common shortcuts). A model's probabilities are calibrated by "
    "temperature scaling fitted on held-out predictions (cross-validation) when they can identify a "
    'temperature, and are labelled "calibrated" then; otherwise they are the model\'s raw softmax, '
    'labelled "raw" (the Model report says why). '
    "Every number on the Model report tab comes from a command in the project's README that anyone "
    "can rerun.\n\n"
    "**For research and teaching only. Not for diagnosis.**"
)
HEATMAP_LABEL = "Heatmap: where the model looked (red = most influence on this class)"
OPERATOR_LABEL = "For the server's operator"
ANY = "Any"
# Seconds between two looks at the runtime's state (models loading, first-start provisioning).
STATUS_POLL_S = 1.0
# Models with a queue of their own would compete for the 2 vCPUs: every event that runs a model
# shares this concurrency group, so requests take turns (limit set in `launch`).
MODEL_QUEUE = "models"
CONCURRENCY_LIMIT = int(os.environ.get("COVID_XRAY_CONCURRENCY", "1"))
QUIZ_INTRO = (
    "**For radiology students.** Look at a test X-ray and choose Normal, Viral Pneumonia or COVID-19; "
    "then see the truth and what DavidNet and CheXNet say, with their heatmaps. Hard cases are the "
    "test images an installed model got wrong in the evaluation. The score is kept for "
    "this browser session only: nothing about you is stored."
)
# Outputs of the quiz handlers: state, status, image, reveal, (summary, label, overlay) per model,
# score, one answer button per class, Next.
N_QUIZ_OUTPUTS = 4 + 3 * len(MODELS) + 1 + len(CLASS_NAMES) + 1


# ---------------------------------------------------------------------------
# Handlers: translate between component values and the package (no logic of their own).
# ---------------------------------------------------------------------------
def probabilities_label(temperature: float | None) -> str:
    if temperature is None:
        return "Class probabilities (raw softmax, uncalibrated)"
    return f"Class probabilities (calibrated, temperature {temperature:.2f})"


def prediction_values(result: PredictionResult | None) -> list:
    """Values for [per model: summary, label, overlay] (all empty when `result` is None)."""
    values = []
    for name in MODELS:
        prediction = result.models[name] if result else None
        if prediction is None or not prediction.available:
            values += ["", None, None]
        else:
            values += [prediction.summary_markdown(), prediction.label_value(), prediction.overlay]
    return values


def input_check_markdown(result: PredictionResult | None) -> str:
    """The warning above the model columns: empty unless the input looks unlike a chest X-ray."""
    check = result.input_check if result is not None else None
    return check.summary_markdown() if check is not None else ""


def diagnose(runtime: AppRuntime, source, method: str, alpha: float, answer: str = "") -> list:
    """Values for [status, preview, (summary, label, overlay) per model, answer, api json, input check]."""
    if not source:
        return ["", None, *prediction_values(None), "", None, ""]
    try:
        result = runtime.predictor.predict(source, method=method, alpha=alpha)
    except ImageDecodeError as exc:
        # Said once, inline, where the upload is; no toast that outlives the next upload.
        return [f"**Could not read this file.** {exc}", None, *prediction_values(None), "", None, ""]
    return [
        "",
        result.image,
        *prediction_values(result),
        answer,
        runtime.api_json(result),
        input_check_markdown(result),
    ]


def api_predict(runtime: AppRuntime, image) -> dict:
    """The `predict` endpoint: one image file in, every model's probabilities out (JSON)."""
    # A bad upload is the caller's mistake, not the server's: one log line, no traceback.
    if not image:
        raise gr.Error(
            "No image received: send one image file (JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM).",
            print_exception=False,
        )
    try:
        return runtime.api_json(runtime.predictor.predict(image, method=None))
    except ImageDecodeError as exc:
        logger.info("predict: refused an upload (%s): %s", exc.reason, exc)
        raise gr.Error(str(exc), print_exception=False) from exc


def example_source(index: int, examples_file=None, data_dir=None) -> tuple[str, str]:
    """(absolute image path, answer markdown) of the curated example at `index`."""
    example = report.load_examples(examples_file)[index]
    return str(report.resolve_dataset_file(example.file, data_dir)), example.answer_markdown()


def refresh_gallery(
    name, true_class, predicted_class, subset, mode, film_set=None, reports_dir=None, data_dir=None
) -> list:
    """Values for [gallery, cases state, status] after a filter change."""
    film_set = film_set or report.KAGGLE_SET_KEY
    try:
        cases = report.find_cases(
            name,
            true_class=None if true_class in (None, ANY) else true_class,
            predicted_class=None if predicted_class in (None, ANY) else predicted_class,
            subset=subset,
            mode=mode,
            reports_dir=reports_dir,
            film_set=film_set,
        )
    except report.ReportError as exc:  # a broken report file must not take the app down
        logger.error("Error gallery unavailable: %s", exc)
        return [[], [], "The evaluation outputs on this server cannot be read, so the gallery is empty."]
    readable = film_set != report.KAGGLE_SET_KEY or report.data_available(data_dir)
    items, shown = report.gallery_items(cases, name, data_dir) if readable else ([], [])
    status = report.gallery_status(cases, name, len(items), mode, data_dir, reports_dir, film_set)
    return [items, shown, status]


def open_case(runtime: AppRuntime, cases: list, index: int, method: str, alpha: float, data_dir=None) -> list:
    """Values for [details, large image, (summary, label, overlay) per model] of one gallery case."""
    case = cases[index]
    path = case.path(data_dir)
    try:
        result = runtime.predictor.predict(str(path), method=method, alpha=alpha)
    except (OSError, ImageDecodeError) as exc:
        raise gr.Error(f"Cannot open {case.file}: {exc}") from exc
    return [case.details_markdown(), result.image, *prediction_values(result)]


def quiz_controls(state: quiz.QuizState | None) -> list:
    """Updates for [answer button per class, Next]: answers while asking, Next after a reveal."""
    phase = state.phase if state is not None else None
    return [gr.update(interactive=phase == "asking") for _ in CLASS_NAMES] + [
        gr.update(interactive=phase == "revealed")
    ]


def _quiz_refused(exc: quiz.QuizError, warn: bool) -> list:
    """Quiz values when a step is refused: the reason in the status line, everything else unchanged."""
    if warn:
        gr.Warning(str(exc), duration=5)
    return [gr.skip(), str(exc), *[gr.skip()] * (N_QUIZ_OUTPUTS - 2)]


def _quiz_question_values(state: quiz.QuizState, image) -> list:
    """Quiz outputs while a question is asked (or the quiz is over): the image, no reveal, empty model
    columns, the score."""
    return [
        state,
        quiz.question_markdown(state),
        image,
        "",
        *prediction_values(None),
        quiz.score_markdown(state),
        *quiz_controls(state),
    ]


def quiz_start(mode: str, models, seed: int | None = None, data_dir=None, reports_dir=None) -> list:
    """Values for the quiz outputs (`N_QUIZ_OUTPUTS`: state, status, image, reveal, (summary, label,
    overlay) per model, score, answer buttons, Next) after "New quiz"; `models` are the installed ones."""
    try:
        state = quiz.new_quiz(quiz.build_pool(mode, data_dir, reports_dir, models), mode, seed, models)
        image = quiz.question_image(state.current, data_dir)
    except quiz.QuizError as exc:
        return _quiz_refused(exc, warn=False)
    return _quiz_question_values(state, image)


def quiz_answer(
    runtime: AppRuntime, state: quiz.QuizState | None, choice: str, data_dir=None, reports_dir=None
) -> list:
    """The quiz outputs after the student picks `choice`: both models' live answers and heatmaps."""
    try:
        quiz.ensure_asking(state)
        path = quiz.question_path(state.current, data_dir)
        result = runtime.predictor.predict(str(path), method=DEFAULT_METHOD, alpha=DEFAULT_ALPHA)
        predictions = {n: p.predicted if p.available else None for n, p in result.models.items()}
        state = quiz.answer(state, choice, predictions)
    except quiz.QuizError as exc:
        return _quiz_refused(exc, warn=True)
    except (OSError, ImageDecodeError) as exc:
        logger.warning("Quiz: cannot predict %s: %s", state.current.file, exc)
        return _quiz_refused(quiz.QuizError("This test image could not be read; click New quiz."), warn=True)
    return [
        state,
        quiz.question_markdown(state),
        gr.skip(),
        quiz.reveal_markdown(state, reports_dir),
        *prediction_values(result),
        quiz.score_markdown(state),
        *quiz_controls(state),
    ]


def quiz_next(state: quiz.QuizState | None, data_dir=None) -> list:
    """The quiz outputs after "Next": the next image (no hint of its class), or the final score."""
    try:
        state = quiz.next_question(state)
        image = quiz.question_image(state.current, data_dir) if state.phase == "asking" else None
    except quiz.QuizError as exc:
        return _quiz_refused(exc, warn=True)
    return _quiz_question_values(state, image)


# ---------------------------------------------------------------------------
# Parts of the page that follow the runtime (models loading, first-start provisioning).
# ---------------------------------------------------------------------------
class ModelColumn(NamedTuple):
    """One model's column: a visitor's line and the operator's detail while it has no answer,
    then its summary, probabilities and heatmap."""

    name: str
    message: gr.Markdown
    operator: gr.Accordion
    detail: gr.Markdown
    summary: gr.Markdown
    label: gr.Label
    overlay: gr.Image

    @property
    def outputs(self) -> list:
        """What a prediction fills."""
        return [self.summary, self.label, self.overlay]

    @property
    def state_outputs(self) -> list:
        """What the runtime's state changes."""
        return [self.message, self.operator, self.detail, self.summary, self.label, self.overlay]


def column_key(runtime: AppRuntime, name: str) -> tuple:
    return (runtime.model_state(name), runtime.model_message(name), runtime.model_detail(name))


def column_updates(runtime: AppRuntime, name: str) -> list:
    """Updates for `ModelColumn.state_outputs` from the runtime's state of `name`."""
    if runtime.model_state(name) == READY:
        temperature = runtime.predictor.loaded[name].temperature
        return [
            gr.update(value="", visible=False),
            gr.update(visible=False),
            gr.update(value=""),
            gr.update(
                value=f"{MODELS[name].display_name} is ready: upload or choose an image.", visible=True
            ),
            gr.update(visible=True, label=probabilities_label(temperature)),
            gr.update(visible=True),
        ]
    detail = runtime.model_detail(name)
    return [
        gr.update(value=runtime.model_message(name), visible=True),
        gr.update(visible=bool(detail)),
        gr.update(value=detail_markdown(detail)),
        gr.update(visible=False),
        gr.update(visible=False),
        gr.update(visible=False),
    ]


def _model_columns(runtime: AppRuntime, prefix: str) -> list[ModelColumn]:
    """One column per model (side by side), laid out for its current state."""
    columns = []
    with gr.Row(equal_height=False):
        for name, spec in MODELS.items():
            updates = column_updates(runtime, name)
            kwargs = [u if isinstance(u, dict) else {} for u in updates]
            with gr.Column(elem_id=f"{prefix}-{name}"):
                gr.Markdown(f"### {spec.display_name}")
                message = gr.Markdown(elem_id=f"{prefix}-{name}-missing", **_strip(kwargs[0]))
                with gr.Accordion(OPERATOR_LABEL, open=False, **_strip(kwargs[1])) as operator:
                    detail = gr.Markdown(**_strip(kwargs[2]))
                summary = gr.Markdown(elem_id=f"{prefix}-{name}-summary", **_strip(kwargs[3]))
                label = gr.Label(
                    num_top_classes=len(CLASS_NAMES),
                    **({"label": probabilities_label(None)} | _strip(kwargs[4])),
                )
                overlay = gr.Image(
                    label=HEATMAP_LABEL,
                    interactive=False,
                    elem_id=f"{prefix}-{name}-overlay",
                    height=380,
                    format="jpeg",  # served as JPEG: ~1 ms to encode vs ~35 ms as WebP (Gradio's default)
                    **_strip(kwargs[5]),
                )
            columns.append(ModelColumn(name, message, operator, detail, summary, label, overlay))
    return columns


def _strip(update: dict) -> dict:
    """A `gr.update` dict as constructor keyword arguments."""
    return {k: v for k, v in update.items() if k != "__type__"}


def about_state_markdown(runtime: AppRuntime, reports_dir=None, data_dir=None) -> str:
    """The About tab's line per model: what this server has right now."""
    lines = ["**On this server now:**"]
    for name, spec in MODELS.items():
        state = runtime.model_state(name)
        if state == READY:
            metrics = report.load_metrics(name, reports_dir) or {}
            official = ((metrics.get("subsets") or {}).get("official") or {}).get("accuracy")
            score = (
                f", {official:.1%} accuracy on the official test set" if isinstance(official, float) else ""
            )
            lines.append(f"- {spec.display_name}: ready{score}.")
        else:
            message = runtime.model_message(name)  # a sentence that names the model already
            named = message.startswith(spec.display_name)
            lines.append(f"- {message}" if named else f"- {spec.display_name}: {message}")
    data = runtime.dataset_message(data_dir)
    lines.append(f"- Test images: {data or 'available (examples, gallery and quiz).'}")
    return "\n".join(lines)


class ReportPanel(NamedTuple):
    """One model's part of the Model report tab (filled from its evaluation outputs)."""

    name: str
    metrics: gr.Markdown
    operator: gr.Accordion
    detail: gr.Markdown
    confusion: tuple
    history: gr.Plot
    calibration: gr.Markdown
    reliability: gr.Image
    faithfulness: gr.Markdown
    faithfulness_image: gr.Image
    shortcuts: gr.Markdown
    external: gr.Markdown

    @property
    def outputs(self) -> list:
        return [
            self.metrics,
            self.operator,
            self.detail,
            *self.confusion,
            self.history,
            self.calibration,
            self.reliability,
            self.faithfulness,
            self.faithfulness_image,
            self.shortcuts,
            self.external,
        ]


def report_key(name: str, reports_dir=None) -> tuple:
    """Changes when the model's evaluation outputs change (they appear after first-start training)."""
    folder = MODELS[name].report_dir(reports_dir)
    return (str(folder), report.stamp(folder / config.METRICS_FILE))


def _image_update(path: Path | None) -> dict:
    image = report.load_png(path)
    return gr.update(value=image, visible=image is not None)


def report_updates(name: str, reports_dir=None) -> list:
    """Updates for `ReportPanel.outputs`: the evaluation when there is one, else one line and the
    operator's command."""
    evaluated = report.load_metrics(name, reports_dir) is not None
    confusion = []
    for subset in config.TEST_SUBSET_TITLES:
        image = report.load_confusion_image(name, subset, reports_dir)
        confusion.append(gr.update(value=image, visible=image is not None))
    history = report.history_image(name, reports_dir) if evaluated else None
    detail = (
        ""
        if evaluated
        else "Evaluate it once it is installed (it is trained first):\n    "
        + config.EVALUATE_COMMAND.format(name=name)
    )
    if evaluated:
        extras = [
            gr.update(value=report.calibration_markdown(name, reports_dir), visible=True),
            _image_update(report.reliability_image_path(name, reports_dir)),
            gr.update(value=report.faithfulness_markdown(name, reports_dir), visible=True),
            _image_update(report.faithfulness_image_path(name, reports_dir)),
            gr.update(value=report.shortcuts_markdown(name, reports_dir), visible=True),
        ]
    else:
        extras = [gr.update(visible=False)] * 5
    external = report.external_sets_markdown(name, reports_dir)
    extras.append(gr.update(value=external, visible=bool(external)))
    return [
        gr.update(value=report.metrics_markdown(name, reports_dir)),
        gr.update(visible=bool(detail)),
        gr.update(value=detail_markdown(detail)),
        *confusion,
        gr.update(value=history, visible=history is not None),
        *extras,
    ]


def _report_panel(name: str, reports_dir=None) -> ReportPanel:
    updates = [_strip(u) for u in report_updates(name, reports_dir)]
    metrics = gr.Markdown(elem_id=f"report-{name}-metrics", **updates[0])
    with gr.Accordion(OPERATOR_LABEL, open=False, **updates[1]) as operator:
        detail = gr.Markdown(**updates[2])
    confusion = []
    with gr.Row():
        for offset, title in enumerate(config.TEST_SUBSET_TITLES.values()):
            confusion.append(
                gr.Image(label=f"Confusion matrix, {title.lower()}", interactive=False, **updates[3 + offset])
            )
    n = 3 + len(confusion)
    history = gr.Image(label="Training curves", interactive=False, buttons=["fullscreen"], **updates[n])
    calib = gr.Markdown(elem_id=f"calibration-{name}", **updates[n + 1])
    reliability = gr.Image(
        label="Reliability diagram", interactive=False, buttons=["fullscreen"], **updates[n + 2]
    )
    faith = gr.Markdown(elem_id=f"faithfulness-{name}", **updates[n + 3])
    faith_image = gr.Image(
        label="Heatmap faithfulness: deletion test and border mass",
        interactive=False,
        buttons=["fullscreen"],
        **updates[n + 4],
    )
    probe = gr.Markdown(elem_id=f"shortcuts-{name}", **updates[n + 5])
    external = gr.Markdown(elem_id=f"external-{name}", **updates[n + 6])
    return ReportPanel(
        name,
        metrics,
        operator,
        detail,
        tuple(confusion),
        history,
        calib,
        reliability,
        faith,
        faith_image,
        probe,
        external,
    )


class ShortcutTools(NamedTuple):
    """The "See the shortcut" panel of a tab: a button, then per model a summary, the nearest
    training films and the what-if chart."""

    button: gr.Button
    outputs: list


def _shortcut_tools(prefix: str) -> ShortcutTools:
    with gr.Accordion(
        "See the shortcut: similar training films and a what-if probe",
        open=False,
        elem_id=f"{prefix}-shortcut",
    ):
        gr.Markdown(teaching.INTRO_MARKDOWN)
        button = gr.Button("Show similar training films and probe the image", elem_id=f"{prefix}-explore")
        outputs = []
        with gr.Row(equal_height=False):
            for name, spec in MODELS.items():
                with gr.Column():
                    outputs.append(gr.Markdown(elem_id=f"{prefix}-{name}-shortcut-summary"))
                    outputs.append(
                        gr.Gallery(
                            label=f"Training films most like this one, for {spec.display_name}",
                            columns=5,
                            height="fit-content",
                            allow_preview=False,
                            object_fit="cover",
                            elem_id=f"{prefix}-{name}-neighbours",
                        )
                    )
                    outputs.append(
                        gr.Plot(label=f"{spec.display_name}: what-if probe", elem_id=f"{prefix}-{name}-probe")
                    )
    return ShortcutTools(button, outputs)


def shortcut_values(runtime: AppRuntime, source) -> list:
    """Values for `ShortcutTools.outputs` for one image (path), or a reason when there is none."""
    if not source:
        return ["Choose or upload an image first.", None, None] + ["", None, None] * (len(MODELS) - 1)
    try:
        views = teaching.explore(runtime, source)
    except ImageDecodeError as exc:
        return [f"**Could not read this file.** {exc}", None, None] + ["", None, None] * (len(MODELS) - 1)
    values = []
    for view in views.values():
        values += [
            teaching.summary_markdown(view),
            teaching.neighbour_items(view),
            teaching.probe_figure(view),
        ]
    return values


def scroll_js(elem_id: str) -> str:
    """Browser-side: bring a result into view (on a phone the results sit far below the input)."""
    return (
        f"() => {{ const el = document.getElementById({elem_id!r}); "
        "if (el) el.scrollIntoView({behavior: 'smooth', block: 'start'}); }"
    )


def _explain_controls() -> tuple[gr.Radio, gr.Slider]:
    method = gr.Radio(
        [(label, key) for key, label in METHOD_DISPLAY_NAMES.items()],
        value=DEFAULT_METHOD,
        label="Heatmap method",
        info=(
            "Grad-CAM and Grad-CAM++ take well under a second; Score-CAM takes a few seconds. "
            "SmoothGrad (pixel-level gradients, by tf-keras-vis) takes about a second for DavidNet "
            "and a few seconds for CheXNet."
        ),
    )
    alpha = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="Heatmap opacity")
    return method, alpha


# ---------------------------------------------------------------------------
# Layout.
# ---------------------------------------------------------------------------
def build_demo(
    runtime: AppRuntime,
    *,
    reports_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    examples_file: str | os.PathLike | None = None,
) -> gr.Blocks:
    """Lay out the five tabs and wire their events to `runtime` and `covid_xray.report`."""
    try:
        examples = report.load_examples(examples_file)
    except report.ReportError as exc:  # a broken committed file must not take the app down
        logger.error("Examples unavailable: %s", exc)
        examples = ()
    model_choices = [(spec.display_name, name) for name, spec in MODELS.items()]
    class_choices = [ANY, *[(CLASS_DISPLAY_NAMES[c], c) for c in CLASS_NAMES]]

    def data_ready() -> bool:
        return report.data_available(data_dir)

    def example_items() -> list:
        return report.example_gallery(examples, data_dir) if data_ready() else []

    def dataset_line() -> str:
        return runtime.dataset_message(data_dir)

    # What each part of the page that follows the runtime depends on (see `on_tick`).
    keys = {
        "status": runtime.status_line,
        **{f"model-{name}": (lambda name=name: column_key(runtime, name)) for name in MODELS},
        "data": lambda: (data_ready(), dataset_line()),
        **{f"report-{name}": (lambda name=name: report_key(name, reports_dir)) for name in MODELS},
        "teaching": lambda: (
            about_state_markdown(runtime, reports_dir, data_dir),
            *[report_key(n, reports_dir) for n in MODELS],
        ),
    }
    # Read before the components take their first values: a change in between reaches the page
    # with the first tick.
    built = {name: key() for name, key in keys.items()}

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(NOTICE, elem_id="notice")
        status_line = gr.Markdown(runtime.status_line(), elem_id="status-line")
        timer = gr.Timer(STATUS_POLL_S)
        # Per browser session: what the page last showed of the runtime (at first: as built).
        seen = gr.State(built)

        # The documented API endpoint: hidden components, never triggered from the page. It is
        # the first event on purpose: Gradio's page matches the endpoint with index 0 against the
        # API's first endpoint, and any other event there logs "Too many arguments provided for
        # the endpoint" in the browser console.
        api_image = gr.File(label="image", type="filepath", visible=False)
        api_result = gr.JSON(visible=False)
        api_trigger = gr.Button(visible=False)
        api_trigger.click(
            lambda image: api_predict(runtime, image),
            api_image,
            api_result,
            api_name="predict",
            api_description="One chest X-ray file (JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM) in; "
            "each model's availability, predicted class and class probabilities out.",
            concurrency_id=MODEL_QUEUE,
        )

        # ----------------------------------------------------------- Diagnose
        with gr.Tab("Diagnose", id="diagnose"):
            source = gr.State(None)
            answer_state = gr.State("")
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    upload = gr.File(
                        label="Upload a chest X-ray (JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM)",
                        file_count="single",
                        type="filepath",
                        height=120,
                        elem_id="upload",
                    )
                    status = gr.Markdown(elem_id="diagnose-status")
                    preview = gr.Image(
                        label="Input as decoded",
                        interactive=False,
                        height=300,
                        elem_id="preview",
                        format="jpeg",  # as the overlays (see _model_columns)
                    )
                    method, alpha = _explain_controls()
                    gr.Markdown("#### Examples from the test set (click one)")
                    initial_examples = example_items()
                    examples_missing = gr.Markdown(
                        dataset_line(), visible=not initial_examples, elem_id="examples-missing"
                    )
                    with gr.Accordion(OPERATOR_LABEL, open=False, visible=not data_ready()) as data_operator:
                        gr.Markdown(detail_markdown(runtime.dataset_detail()))
                    example_gallery = gr.Gallery(
                        value=initial_examples,
                        columns=3,
                        height="fit-content",
                        fit_columns=False,
                        allow_preview=False,
                        object_fit="cover",
                        show_label=False,
                        visible=bool(initial_examples),
                        elem_id="examples",
                    )
                with gr.Column(scale=2):
                    answer = gr.Markdown(elem_id="answer")
                    # The OOD guard's warning (covid_xray.ood): shown, never a refusal.
                    input_warning = gr.Markdown(elem_id="input-check")
                    diagnose_columns = _model_columns(runtime, "diagnose")
                    diagnose_tools = _shortcut_tools("diagnose")
                    with gr.Accordion("API response (JSON)", open=False):
                        api_view = gr.JSON(show_label=False)
            model_outputs = [c for col in diagnose_columns for c in col.outputs]
            diagnose_outputs = [status, preview, *model_outputs, answer, api_view, input_warning]

            def on_upload(path, method_value, alpha_value):
                # A new file clears the example selection ring (Gradio's page reads -1 as "none";
                # None would leave the ring where it was).
                return [
                    gr.update(selected_index=-1),
                    path,
                    "",
                    *diagnose(runtime, path, method_value, alpha_value),
                ]

            def on_example(method_value, alpha_value, evt: gr.SelectData):
                path, text = example_source(evt.index, examples_file, data_dir)
                return [None, path, text, *diagnose(runtime, path, method_value, alpha_value, text)]

            def on_settings(path, text, method_value, alpha_value):
                return diagnose(runtime, path, method_value, alpha_value, text)

            # Page events, not API: only `predict` is (private events keep the API page to it).
            model_event = {"concurrency_id": MODEL_QUEUE, "api_visibility": "private"}
            upload.upload(
                on_upload,
                [upload, method, alpha],
                [example_gallery, source, answer_state, *diagnose_outputs],
                **model_event,
            )
            upload.clear(
                lambda: [None, "", *diagnose(runtime, None, DEFAULT_METHOD, DEFAULT_ALPHA)],
                None,
                [source, answer_state, *diagnose_outputs],
                api_visibility="private",
            )
            example_gallery.select(
                on_example, [method, alpha], [upload, source, answer_state, *diagnose_outputs], **model_event
            ).then(None, js=scroll_js("answer"))
            diagnose_tools.button.click(
                lambda path: shortcut_values(runtime, path), source, diagnose_tools.outputs, **model_event
            )
            method.change(on_settings, [source, answer_state, method, alpha], diagnose_outputs, **model_event)
            alpha.release(on_settings, [source, answer_state, method, alpha], diagnose_outputs, **model_event)

        # ----------------------------------------------------------- Error gallery
        with gr.Tab("Error gallery", id="gallery"):
            gr.Markdown(
                "Test images from the evaluation of each model. Captions read "
                "`true > predicted (confidence)` for the chosen model; click one to see both models' "
                "probabilities and heatmaps."
            )
            gallery_missing = gr.Markdown(
                dataset_line(), visible=not data_ready(), elem_id="gallery-missing"
            )
            # Without the test images the filters, thumbnails and case view have nothing to show.
            gallery_body = gr.Column(visible=data_ready(), elem_id="gallery-body")
            film_sets = report.film_sets(reports_dir)
            with gallery_body, gr.Row():
                # The Kaggle test split, and each labelled folder evaluated with `evaluate --data-dir`.
                g_set = gr.Dropdown(
                    [(title, key) for key, title in film_sets],
                    value=report.KAGGLE_SET_KEY,
                    label="Films",
                    visible=len(film_sets) > 1,
                    elem_id="gallery-set",
                )
                g_model = gr.Dropdown(model_choices, value=next(iter(MODELS)), label="Model")
                g_true = gr.Dropdown(class_choices, value=ANY, label="True class")
                g_pred = gr.Dropdown(class_choices, value=ANY, label="Predicted class")
            with gallery_body, gr.Row():
                g_subset = gr.Radio(
                    [(v, k) for k, v in report.SUBSETS.items()], value="official", label="Test set"
                )
                g_mode = gr.Radio(
                    [(v, k) for k, v in report.GALLERY_MODES.items()], value="misclassified", label="Show"
                )
            initial = refresh_gallery(
                next(iter(MODELS)), ANY, ANY, "official", "misclassified", None, reports_dir, data_dir
            )
            with gallery_body:
                g_status = gr.Markdown(initial[2], elem_id="gallery-status")
            g_cases = gr.State(initial[1])
            with gallery_body, gr.Row():
                with gr.Column(scale=1, min_width=300):
                    g_gallery = gr.Gallery(
                        value=initial[0],
                        columns=3,
                        height="fit-content",
                        fit_columns=False,
                        allow_preview=False,
                        object_fit="cover",
                        show_label=False,
                        elem_id="error-gallery",
                    )
                    g_method, g_alpha = _explain_controls()
                with gr.Column(scale=2):
                    # The opened case sits beside the thumbnails, not below them: in view at once.
                    g_details = gr.Markdown(elem_id="case-details")
                    g_image = gr.Image(
                        label="Selected image", interactive=False, height=300, elem_id="case-image"
                    )
                    gallery_columns = _model_columns(runtime, "gallery")
                    gallery_tools = _shortcut_tools("gallery")
            g_selected = gr.State(None)  # index of the opened case in g_cases
            filters = [g_model, g_true, g_pred, g_subset, g_mode, g_set]
            # The leakage-free subset exists for the Kaggle split only (the audit is of its train).
            g_set.change(
                lambda key: gr.update(visible=key == report.KAGGLE_SET_KEY),
                g_set,
                g_subset,
                api_visibility="private",
            )
            for control in filters:
                control.change(
                    lambda *values: [
                        *refresh_gallery(*values, reports_dir=reports_dir, data_dir=data_dir),
                        None,
                    ],
                    filters,
                    [g_gallery, g_cases, g_status, g_selected],
                    api_visibility="private",
                )
            case_outputs = [c for col in gallery_columns for c in col.outputs]

            def on_case(cases, method_value, alpha_value, evt: gr.SelectData):
                return [evt.index, *open_case(runtime, cases, evt.index, method_value, alpha_value, data_dir)]

            def on_case_settings(cases, index, method_value, alpha_value):
                if index is None or index >= len(cases):
                    return [gr.skip()] * (2 + len(case_outputs))
                return open_case(runtime, cases, index, method_value, alpha_value, data_dir)

            def on_case_tools(cases, index):
                if index is None or index >= len(cases):
                    return shortcut_values(runtime, None)
                return shortcut_values(runtime, str(cases[index].path(data_dir)))

            gallery_tools.button.click(
                on_case_tools, [g_cases, g_selected], gallery_tools.outputs, **model_event
            )
            case_targets = [g_details, g_image, *case_outputs]
            g_gallery.select(
                on_case, [g_cases, g_method, g_alpha], [g_selected, *case_targets], **model_event
            ).then(None, js=scroll_js("case-details"))
            g_method.change(
                on_case_settings, [g_cases, g_selected, g_method, g_alpha], case_targets, **model_event
            )
            g_alpha.release(
                on_case_settings, [g_cases, g_selected, g_method, g_alpha], case_targets, **model_event
            )

        # ----------------------------------------------------------- Quiz
        with gr.Tab("Quiz", id="quiz"):
            gr.Markdown(QUIZ_INTRO)
            quiz_missing = gr.Markdown(dataset_line(), visible=not data_ready(), elem_id="quiz-missing")
            quiz_body = gr.Column(visible=data_ready(), elem_id="quiz-body")
            with quiz_body, gr.Row():
                q_mode = gr.Radio(
                    [(v, k) for k, v in quiz.MODES.items()],
                    value="all",
                    label="Questions",
                    interactive=data_ready(),
                    elem_id="quiz-mode",
                )
                q_new = gr.Button("New quiz", variant="primary", interactive=data_ready(), elem_id="quiz-new")
                q_next = gr.Button("Next", interactive=False, elem_id="quiz-next")
            # Per browser session, in server memory only (dropped with the session), never on disk.
            q_state = gr.State(None)
            with quiz_body:
                q_status = gr.Markdown(
                    "Click **New quiz** to start." if data_ready() else "", elem_id="quiz-status"
                )
            with quiz_body, gr.Row():
                with gr.Column(scale=1, min_width=300):
                    # An array, never the dataset path: the folder name is the answer.
                    q_image = gr.Image(
                        label="Test X-ray",
                        interactive=False,
                        height=420,
                        buttons=["fullscreen"],
                        elem_id="quiz-image",
                    )
                    with gr.Row():
                        q_answers = [
                            gr.Button(
                                CLASS_DISPLAY_NAMES[c],
                                interactive=False,
                                elem_id=f"quiz-answer-{c.lower().replace(' ', '-')}",
                            )
                            for c in CLASS_NAMES
                        ]
                    q_score = gr.Markdown(elem_id="quiz-score")
                with gr.Column(scale=2):
                    q_reveal = gr.Markdown(elem_id="quiz-reveal")
                    quiz_columns = _model_columns(runtime, "quiz")
                    quiz_tools = _shortcut_tools("quiz")
            q_targets = [
                q_state,
                q_status,
                q_image,
                q_reveal,
                *[c for col in quiz_columns for c in col.outputs],
                q_score,
                *q_answers,
                q_next,
            ]

            def on_quiz_new(mode):
                # The models installed now (CheXNet may have joined since the page was built).
                installed = runtime.predictor.available_models
                return quiz_start(mode, installed, data_dir=data_dir, reports_dir=reports_dir)

            def on_quiz_answer(choice):
                return lambda state: quiz_answer(runtime, state, choice, data_dir, reports_dir)

            def on_quiz_tools(state):
                # After the answer only: before it, the tools would give the class away.
                if state is None or not state.history or state.phase == "asking":
                    values = shortcut_values(runtime, None)
                    values[0] = "Answer the question first: these tools give the answer away."
                    return values
                return shortcut_values(runtime, str(quiz.question_path(state.history[-1].question, data_dir)))

            quiz_tools.button.click(on_quiz_tools, q_state, quiz_tools.outputs, **model_event)
            q_new.click(on_quiz_new, q_mode, q_targets, api_visibility="private")
            q_next.click(
                lambda state: quiz_next(state, data_dir), q_state, q_targets, api_visibility="private"
            )
            for choice, button in zip(CLASS_NAMES, q_answers, strict=True):
                button.click(on_quiz_answer(choice), q_state, q_targets, **model_event).then(
                    None, js=scroll_js("quiz-reveal")
                )

        # ----------------------------------------------------------- Model report
        with gr.Tab("Model report", id="report"):
            panels = []
            for name, spec in MODELS.items():
                with gr.Tab(spec.display_name):
                    panels.append(_report_panel(name, reports_dir))
            shortcuts = gr.Markdown(report.shortcut_markdown(reports_dir), elem_id="shortcuts")
            gr.Markdown(report.audit_markdown(reports_dir))
            gr.Markdown(report.CONFOUNDS_MARKDOWN)

        # ----------------------------------------------------------- About
        with gr.Tab("About", id="about"):
            gr.Markdown(ABOUT_MARKDOWN)
            about_state = gr.Markdown(
                about_state_markdown(runtime, reports_dir, data_dir), elem_id="about-state"
            )
            about_shortcuts = gr.Markdown(report.shortcut_markdown(reports_dir), elem_id="about-shortcuts")

        # ----------------------------------------------------------- Following the runtime
        all_columns = [*diagnose_columns, *gallery_columns, *quiz_columns]
        groups = {
            # name: (outputs, update function); keys[name] says when to update them.
            "status": ([status_line], lambda: [runtime.status_line()]),
            **{
                f"model-{name}": (
                    [c for col in all_columns if col.name == name for c in col.state_outputs],
                    # One fresh update per component (Gradio may alter an update it sends).
                    lambda name=name: [u for _ in range(3) for u in column_updates(runtime, name)],
                )
                for name in MODELS
            },
            "data": (
                [
                    examples_missing,
                    data_operator,
                    example_gallery,
                    gallery_missing,
                    gallery_body,
                    quiz_missing,
                    quiz_body,
                    q_mode,
                    q_new,
                    q_status,
                ],
                lambda: _data_updates(data_ready(), dataset_line(), example_items()),
            ),
            **{
                f"report-{panel.name}": (
                    panel.outputs,
                    lambda name=panel.name: report_updates(name, reports_dir),
                )
                for panel in panels
            },
            "teaching": (
                [about_state, shortcuts, about_shortcuts],
                lambda: [
                    about_state_markdown(runtime, reports_dir, data_dir),
                    *[report.shortcut_markdown(reports_dir)] * 2,
                ],
            ),
        }
        gallery_refresh_outputs = [g_gallery, g_cases, g_status, g_selected]
        tick_outputs = [seen, timer, *gallery_refresh_outputs]
        for outputs, _update in groups.values():
            tick_outputs += outputs

        def on_tick(last: dict, *gallery_filters):
            """Push each part of the page whose runtime state changed since this session last looked;
            stop polling once loading and provisioning are over and the page shows their outcome."""
            finished = runtime.finished  # read first: a later change is caught by the next tick
            now = {name: key() for name, key in keys.items()}
            values = []
            for name, (outputs, update) in groups.items():
                values += update() if last.get(name) != now[name] else [gr.skip()] * len(outputs)
            gallery_inputs_changed = any(
                last.get(k) != now[k] for k in ("data", *[f"report-{n}" for n in MODELS])
            )
            gallery = (
                [*refresh_gallery(*gallery_filters, reports_dir=reports_dir, data_dir=data_dir), None]
                if gallery_inputs_changed
                else [gr.skip()] * len(gallery_refresh_outputs)
            )
            timer_update = gr.Timer(active=False) if finished and now == last else gr.skip()
            return [now, timer_update, *gallery, *values]

        timer.tick(
            on_tick,
            [seen, *filters],
            tick_outputs,
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
    return demo


def _data_updates(ready: bool, line: str, items: list) -> list:
    """Updates for [examples line, operator's detail, examples gallery, gallery line, gallery body, quiz
    line, quiz body, quiz mode, New quiz, quiz status]."""
    return [
        gr.update(value=line, visible=not items),
        gr.update(visible=not ready),
        gr.update(value=items, visible=bool(items)),
        gr.update(value=line, visible=not ready),
        gr.update(visible=ready),
        gr.update(value=line, visible=not ready),
        gr.update(visible=ready),
        gr.update(interactive=ready),
        gr.update(interactive=ready),
        gr.update(value="Click **New quiz** to start." if ready else ""),
    ]


# ---------------------------------------------------------------------------
# Start-up.
# ---------------------------------------------------------------------------
def blocked_paths() -> list[str]:
    """Folders Gradio must never serve, whatever a request asks for (defence in depth).

    Gradio only serves its own cache and `allowed_paths` (we add none); blocking the project, the
    checkpoints, the dataset, the reports and the provisioning cache as well keeps them out even if
    that default changes. A folder holding Gradio's cache is left out (it would block our outputs).
    """
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    paths = [
        config.resolve_checkpoint_dir(),
        config.resolve_data_dir(),
        config.resolve_reports_dir(),
        config.resolve_home(),
    ]
    if not cache.is_relative_to(config.PROJECT_ROOT):
        paths.append(config.PROJECT_ROOT)
    return [str(p) for p in paths if not cache.is_relative_to(p)]


def create_app(checkpoint_dir=None, weights_path=None, *, runtime: AppRuntime | None = None) -> gr.Blocks:
    """Build the UI at once; load the models and provision what is missing in the background.

    Given a `runtime` (not started), the page is built on it and the runtime is left for the caller
    to start: `launch(demo, runtime)` starts it once the server answers (what `python app.py` does).
    """
    if runtime is not None:
        return build_demo(runtime)
    runtime = AppRuntime(checkpoint_dir or os.environ.get(config.CHECKPOINT_DIR_ENV_VAR), weights_path)
    demo = build_demo(runtime)
    runtime.start(background=True)
    return demo


def launch(demo: gr.Blocks, runtime: AppRuntime | None = None, **kwargs) -> None:
    """Serve with a small queue and an upload limit; host and port come from GRADIO_SERVER_*.

    A `runtime` given here (not started yet) starts once the server answers: its thread imports
    TensorFlow and loads the models, which would otherwise compete with Gradio's own start for the
    CPU and the GIL, and the page would answer seconds later. Blocks until the server stops,
    unless `prevent_thread_lock=True`.
    """
    import sys

    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    # Uploaded X-rays are patient data: Gradio's run history (kept in the browser, or in a
    # Hugging Face bucket a visitor connects) stays off.
    kwargs.setdefault("run_history", False)
    # As Gradio does: block unless asked not to, or in an interactive session.
    interactive = bool(sys.flags.interactive or hasattr(sys, "ps1"))
    block = not kwargs.pop("prevent_thread_lock", False) and not interactive
    if runtime is not None and (kwargs.get("debug") or os.environ.get("GRADIO_DEBUG") == "1"):
        runtime.start(background=True)  # Gradio's debug mode blocks inside launch()
        runtime = None
    demo.launch(
        max_file_size=config.MAX_UPLOAD_BYTES,
        blocked_paths=blocked_paths(),
        prevent_thread_lock=True,
        **kwargs,
    )
    if runtime is not None:
        runtime.start(background=True)
    if block:
        demo.block_thread()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _runtime = AppRuntime(os.environ.get(config.CHECKPOINT_DIR_ENV_VAR))
    launch(create_app(runtime=_runtime), _runtime)
