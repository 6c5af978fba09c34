"""Gradio app: DavidNet and CheXNet side by side with Grad-CAM, an error gallery and a model report.

    python app.py        # serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (default 127.0.0.1:7860)

This file only lays out the UI and wires events; predictions and explanations come from
`covid_xray.inference.Predictor`, everything read from disk from `covid_xray.report`.
Importing it loads no model: `create_app()` (or `build_demo(predictor)` in tests) does.

API: `predict` takes one image file (JPEG, PNG, ..., DICOM) and returns JSON
`{"davidnet": {"available": true, "prediction": "Covid", "probabilities": {...}},
"chexnet": {"available": false, "message": "..."},
"input_check": {"is_xray_likely": false, "warnings": ["The image is in colour ..."]}}`;
`input_check` is the OOD guard (`covid_xray.ood`): it warns, it never refuses an image.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import gradio as gr

from covid_xray import calibration, config, explain_eval, quiz, report
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS
from covid_xray.imaging import ImageDecodeError
from covid_xray.inference import (
    DEFAULT_ALPHA,
    DEFAULT_METHOD,
    METHOD_DISPLAY_NAMES,
    PredictionResult,
    Predictor,
    configure_cpu_threads,
    unavailable_markdown,
)

logger = logging.getLogger("covid_xray.app")

TITLE = "COVID-19 chest X-ray classifier: DavidNet vs CheXNet, with Grad-CAM"
NOTICE = (
    "**For research and teaching only. Not for diagnosis.** Both models were trained on 251 images "
    "of a small public dataset with known shortcuts (children vs adults, duplicated images); do not "
    "use their output for any decision about a patient."
)
ABOUT_MARKDOWN = (
    "## About\n\n"
    "Two TensorFlow models classify a frontal chest X-ray as Normal, Viral Pneumonia or COVID-19, as in "
    "*Convolutional Neural Networks for COVID-19 Diagnosis*: **DavidNet**, the paper's small CNN "
    "(5,575,011 parameters), and **CheXNet**, DenseNet121 with chest X-ray weights and a small trained "
    "head. Heatmaps (Grad-CAM, Grad-CAM++, Score-CAM) show which pixels raised the predicted class's "
    "score. A model's probabilities are calibrated by temperature scaling fitted on its validation "
    "split when that split can identify a temperature, and are labelled \"calibrated\" then; otherwise "
    "they are the model's raw softmax, labelled \"raw\" (the Model report says why). The API returns "
    "both. Every number on the Model report tab comes from a command "
    "in the project's README that anyone can rerun.\n\n"
    "**For research and teaching only. Not for diagnosis.**"
)
ANY = "Any"
# Models with a queue of their own would compete for the 2 vCPUs: every event that runs a model
# shares this concurrency group, so requests take turns (limit set in `launch`).
MODEL_QUEUE = "models"
CONCURRENCY_LIMIT = int(os.environ.get("COVID_XRAY_CONCURRENCY", "1"))
QUIZ_INTRO = (
    "**For radiology students.** Look at a test X-ray and choose Normal, Viral Pneumonia or COVID-19; "
    "then see the truth and what DavidNet and CheXNet say, with their heatmaps. Hard cases are the "
    "test images an installed model got wrong in the committed evaluation. The score is kept for "
    "this browser session only: nothing about you is stored."
)
# Outputs of the quiz handlers: state, status, image, reveal, (summary, label, overlay) per model,
# score, one answer button per class, Next.
N_QUIZ_OUTPUTS = 4 + 3 * len(MODELS) + 1 + len(CLASS_NAMES) + 1


# ---------------------------------------------------------------------------
# Handlers: translate between component values and the package (no logic of their own).
# ---------------------------------------------------------------------------
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


def diagnose(predictor: Predictor, source, method: str, alpha: float, answer: str = "") -> list:
    """Values for [status, preview, (summary, label, overlay) per model, answer, api json]."""
    return diagnose_checked(predictor, source, method, alpha, answer)[:-1]


def diagnose_checked(predictor: Predictor, source, method: str, alpha: float, answer: str = "") -> list:
    """`diagnose`'s values, then the input-check warning (`input_check_markdown`)."""
    if not source:
        return ["", None, *prediction_values(None), "", None, ""]
    try:
        result = predictor.predict(source, method=method, alpha=alpha)
    except ImageDecodeError as exc:
        gr.Warning(str(exc))
        return [f"**Could not read this file.** {exc}", None, *prediction_values(None), "", None, ""]
    return [
        "",
        result.image,
        *prediction_values(result),
        answer,
        result.to_api_json(),
        input_check_markdown(result),
    ]


def api_predict(predictor: Predictor, image) -> dict:
    """The `predict` endpoint: one image file in, every model's probabilities out (JSON)."""
    # A bad upload is the caller's mistake, not the server's: one log line, no traceback.
    if not image:
        raise gr.Error(
            "No image received: send one image file (JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM).",
            print_exception=False,
        )
    try:
        return predictor.predict(image, method=None).to_api_json()
    except ImageDecodeError as exc:
        logger.info("predict: refused an upload (%s): %s", exc.reason, exc)
        raise gr.Error(str(exc), print_exception=False) from exc


def example_source(index: int, examples_file=None, data_dir=None) -> tuple[str, str]:
    """(absolute image path, answer markdown) of the curated example at `index`."""
    example = report.load_examples(examples_file)[index]
    return str(report.resolve_dataset_file(example.file, data_dir)), example.answer_markdown()


def refresh_gallery(name, true_class, predicted_class, subset, mode, reports_dir=None, data_dir=None) -> list:
    """Values for [gallery, cases state, status] after a filter change."""
    try:
        cases = report.find_cases(
            name,
            true_class=None if true_class in (None, ANY) else true_class,
            predicted_class=None if predicted_class in (None, ANY) else predicted_class,
            subset=subset,
            mode=mode,
            reports_dir=reports_dir,
        )
    except report.ReportError as exc:  # a broken committed file must not take the app down
        logger.error("Error gallery unavailable: %s", exc)
        return [[], [], f"**Cannot read the evaluation outputs:** {exc}"]
    items, shown = (
        report.gallery_items(cases, name, data_dir) if report.data_available(data_dir) else ([], [])
    )
    status = report.gallery_status(cases, name, len(items), mode, data_dir, reports_dir)
    return [items, shown, status]


def open_case(
    predictor: Predictor, cases: list, index: int, method: str, alpha: float, data_dir=None
) -> list:
    """Values for [details, large image, (summary, label, overlay) per model] of one gallery case."""
    case = cases[index]
    path = report.resolve_dataset_file(case.file, data_dir)
    try:
        result = predictor.predict(str(path), method=method, alpha=alpha)
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
        gr.Warning(str(exc))
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


def quiz_answer(predictor: Predictor, state: quiz.QuizState | None, choice: str, data_dir=None) -> list:
    """The quiz outputs after the student picks `choice`: both models' live answers and heatmaps."""
    try:
        quiz.ensure_asking(state)
        path = quiz.question_path(state.current, data_dir)
        result = predictor.predict(str(path), method=DEFAULT_METHOD, alpha=DEFAULT_ALPHA)
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
        quiz.reveal_markdown(state),
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
# Layout.
# ---------------------------------------------------------------------------
def _model_columns(predictor: Predictor, prefix: str) -> list[gr.components.Component]:
    """One column per model (side by side): summary, probabilities, heatmap overlay.

    A model that is not installed gets a panel saying what is missing instead of its outputs.
    """
    outputs = []
    with gr.Row(equal_height=False):
        for name, spec in MODELS.items():
            available = predictor.is_available(name)
            with gr.Column(elem_id=f"{prefix}-{name}"):
                gr.Markdown(f"### {spec.display_name}")
                if not available:
                    gr.Markdown(
                        unavailable_markdown(spec.display_name, predictor.status_message(name)),
                        elem_id=f"{prefix}-{name}-missing",
                    )
                summary = gr.Markdown(visible=available, elem_id=f"{prefix}-{name}-summary")
                temperature = predictor.loaded[name].temperature if available else None
                label = gr.Label(
                    num_top_classes=len(CLASS_NAMES),
                    label="Class probabilities"
                    + (" (raw softmax, uncalibrated)" if temperature is None else f" (calibrated, temperature {temperature:.2f})"),
                    visible=available,
                )
                overlay = gr.Image(
                    label="Heatmap over the X-ray (red: strongest evidence)",
                    interactive=False,
                    visible=available,
                    elem_id=f"{prefix}-{name}-overlay",
                    height=380,
                )
                outputs += [summary, label, overlay]
    return outputs


def _explain_controls() -> tuple[gr.Radio, gr.Slider]:
    method = gr.Radio(
        [(label, key) for key, label in METHOD_DISPLAY_NAMES.items()],
        value=DEFAULT_METHOD,
        label="Heatmap method",
        info="Grad-CAM and Grad-CAM++ take well under a second; Score-CAM takes a few seconds.",
    )
    alpha = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="Heatmap opacity")
    return method, alpha


def build_demo(
    predictor: Predictor,
    *,
    reports_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    examples_file: str | os.PathLike | None = None,
) -> gr.Blocks:
    """Lay out the five tabs and wire their events to `predictor` and `covid_xray.report`."""
    have_data = report.data_available(data_dir)
    try:
        examples = report.load_examples(examples_file)
    except report.ReportError as exc:  # a broken committed file must not take the app down
        logger.error("Examples unavailable: %s", exc)
        examples = ()
    example_items = report.example_gallery(examples, data_dir) if have_data else []
    model_choices = [(spec.display_name, name) for name, spec in MODELS.items()]
    class_choices = [ANY, *[(CLASS_DISPLAY_NAMES[c], c) for c in CLASS_NAMES]]

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(NOTICE, elem_id="notice")

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
                        label="Input as decoded", interactive=False, height=300, elem_id="preview"
                    )
                    method, alpha = _explain_controls()
                    gr.Markdown("#### Examples from the test set (click one)")
                    if not have_data:
                        gr.Markdown(report.missing_data_message(data_dir), elem_id="examples-missing")
                    elif not example_items:
                        gr.Markdown("No curated examples available (`examples/examples.csv`).")
                    example_gallery = gr.Gallery(
                        value=example_items,
                        columns=3,
                        height="fit-content",
                        fit_columns=False,
                        allow_preview=False,
                        object_fit="cover",
                        show_label=False,
                        visible=bool(example_items),
                        elem_id="examples",
                    )
                with gr.Column(scale=2):
                    answer = gr.Markdown(elem_id="answer")
                    # The OOD guard's warning (covid_xray.ood): shown, never a refusal.
                    input_warning = gr.Markdown(elem_id="input-check")
                    model_outputs = _model_columns(predictor, "diagnose")
                    with gr.Accordion("API response (JSON)", open=False):
                        api_view = gr.JSON(show_label=False)
            diagnose_outputs = [status, preview, *model_outputs, answer, api_view, input_warning]

            def on_upload(path, method_value, alpha_value):
                return [path, "", *diagnose_checked(predictor, path, method_value, alpha_value)]

            def on_example(method_value, alpha_value, evt: gr.SelectData):
                path, text = example_source(evt.index, examples_file, data_dir)
                return [None, path, text, *diagnose_checked(predictor, path, method_value, alpha_value, text)]

            def on_settings(path, text, method_value, alpha_value):
                return diagnose_checked(predictor, path, method_value, alpha_value, text)

            model_event = {"concurrency_id": MODEL_QUEUE, "api_visibility": "undocumented"}
            upload.upload(
                on_upload, [upload, method, alpha], [source, answer_state, *diagnose_outputs], **model_event
            )
            upload.clear(
                lambda: [None, "", *diagnose_checked(predictor, None, DEFAULT_METHOD, DEFAULT_ALPHA)],
                None,
                [source, answer_state, *diagnose_outputs],
                api_visibility="private",
            )
            example_gallery.select(
                on_example, [method, alpha], [upload, source, answer_state, *diagnose_outputs], **model_event
            )
            method.change(on_settings, [source, answer_state, method, alpha], diagnose_outputs, **model_event)
            alpha.release(on_settings, [source, answer_state, method, alpha], diagnose_outputs, **model_event)

            # The documented API endpoint: hidden components, never triggered from the page.
            api_image = gr.File(label="image", type="filepath", visible=False)
            api_result = gr.JSON(visible=False)
            api_trigger = gr.Button(visible=False)
            api_trigger.click(
                lambda image: api_predict(predictor, image),
                api_image,
                api_result,
                api_name="predict",
                api_description="One chest X-ray file (JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM) in; "
                "each model's availability, predicted class and class probabilities out.",
                concurrency_id=MODEL_QUEUE,
            )

        # ----------------------------------------------------------- Error gallery
        with gr.Tab("Error gallery", id="gallery"):
            gr.Markdown(
                "Test images from the committed evaluation (`reports/<model>/predictions.csv`). "
                "Captions read `true > predicted (confidence)` for the chosen model; click one to see "
                "both models' probabilities and heatmaps."
            )
            with gr.Row():
                g_model = gr.Dropdown(model_choices, value=next(iter(MODELS)), label="Model")
                g_true = gr.Dropdown(class_choices, value=ANY, label="True class")
                g_pred = gr.Dropdown(class_choices, value=ANY, label="Predicted class")
            with gr.Row():
                g_subset = gr.Radio(
                    [(v, k) for k, v in report.SUBSETS.items()], value="official", label="Test set"
                )
                g_mode = gr.Radio(
                    [(v, k) for k, v in report.GALLERY_MODES.items()], value="misclassified", label="Show"
                )
            initial = refresh_gallery(
                next(iter(MODELS)), ANY, ANY, "official", "misclassified", reports_dir, data_dir
            )
            g_status = gr.Markdown(initial[2], elem_id="gallery-status")
            g_cases = gr.State(initial[1])
            g_gallery = gr.Gallery(
                value=initial[0],
                columns=4,
                height="fit-content",
                fit_columns=False,
                allow_preview=False,
                object_fit="cover",
                show_label=False,
                elem_id="error-gallery",
            )
            g_selected = gr.State(None)  # index of the opened case in g_cases
            filters = [g_model, g_true, g_pred, g_subset, g_mode]
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
            g_details = gr.Markdown(elem_id="case-details")
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    g_image = gr.Image(label="Selected image", interactive=False, height=420)
                    g_method, g_alpha = _explain_controls()
                with gr.Column(scale=2):
                    case_outputs = _model_columns(predictor, "gallery")

            def on_case(cases, method_value, alpha_value, evt: gr.SelectData):
                return [
                    evt.index,
                    *open_case(predictor, cases, evt.index, method_value, alpha_value, data_dir),
                ]

            def on_case_settings(cases, index, method_value, alpha_value):
                if index is None or index >= len(cases):
                    return [gr.skip()] * (2 + len(case_outputs))
                return open_case(predictor, cases, index, method_value, alpha_value, data_dir)

            case_targets = [g_details, g_image, *case_outputs]
            g_gallery.select(
                on_case, [g_cases, g_method, g_alpha], [g_selected, *case_targets], **model_event
            )
            g_method.change(
                on_case_settings, [g_cases, g_selected, g_method, g_alpha], case_targets, **model_event
            )
            g_alpha.release(
                on_case_settings, [g_cases, g_selected, g_method, g_alpha], case_targets, **model_event
            )

        # ----------------------------------------------------------- Quiz
        with gr.Tab("Quiz", id="quiz"):
            gr.Markdown(QUIZ_INTRO)
            if not have_data:
                gr.Markdown(report.missing_data_message(data_dir), elem_id="quiz-missing")
            with gr.Row():
                q_mode = gr.Radio(
                    [(v, k) for k, v in quiz.MODES.items()],
                    value="all",
                    label="Questions",
                    interactive=have_data,
                    elem_id="quiz-mode",
                )
                q_new = gr.Button("New quiz", variant="primary", interactive=have_data, elem_id="quiz-new")
                q_next = gr.Button("Next", interactive=False, elem_id="quiz-next")
            # Per browser session, in server memory only (dropped with the session), never on disk.
            q_state = gr.State(None)
            q_status = gr.Markdown("Click **New quiz** to start." if have_data else "", elem_id="quiz-status")
            with gr.Row():
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
                    quiz_model_outputs = _model_columns(predictor, "quiz")
            q_targets = [
                q_state,
                q_status,
                q_image,
                q_reveal,
                *quiz_model_outputs,
                q_score,
                *q_answers,
                q_next,
            ]
            installed = predictor.available_models

            def on_quiz_new(mode):
                return quiz_start(mode, installed, data_dir=data_dir, reports_dir=reports_dir)

            def on_quiz_answer(choice):
                return lambda state: quiz_answer(predictor, state, choice, data_dir)

            q_new.click(on_quiz_new, q_mode, q_targets, api_visibility="private")
            q_next.click(
                lambda state: quiz_next(state, data_dir), q_state, q_targets, api_visibility="private"
            )
            for choice, button in zip(CLASS_NAMES, q_answers, strict=True):
                button.click(on_quiz_answer(choice), q_state, q_targets, **model_event)

        # ----------------------------------------------------------- Model report
        with gr.Tab("Model report", id="report"):
            for name, spec in MODELS.items():
                with gr.Tab(spec.display_name):
                    gr.Markdown(report.metrics_markdown(name, reports_dir))
                    with gr.Row():
                        for subset, title in report.SUBSET_TITLES.items():
                            image = report.load_confusion_image(name, subset, reports_dir)
                            if image is not None:
                                gr.Image(image, label=f"Confusion matrix, {title.lower()}", interactive=False)
                    figure = report.plot_history(name, reports_dir)
                    if figure is not None:
                        gr.Plot(figure, label="Training curves")
                    else:
                        gr.Markdown(f"No training curves (`{spec.report_dir(reports_dir)}/history.csv`).")
                    gr.Markdown(calibration.calibration_markdown(name, reports_dir), elem_id=f"calibration-{name}")
                    _report_image(calibration.reliability_image_path(name, reports_dir), "Reliability diagram")
                    gr.Markdown(
                        explain_eval.faithfulness_markdown(name, reports_dir), elem_id=f"faithfulness-{name}"
                    )
                    _report_image(
                        explain_eval.faithfulness_image_path(name, reports_dir),
                        "Heatmap faithfulness: deletion test and border mass",
                    )
            gr.Markdown(report.shortcut_markdown(reports_dir), elem_id="shortcuts")
            gr.Markdown(report.audit_markdown(reports_dir))
            gr.Markdown(report.CONFOUNDS_MARKDOWN)

        # ----------------------------------------------------------- About
        with gr.Tab("About", id="about"):
            gr.Markdown(ABOUT_MARKDOWN)
            gr.Markdown(report.shortcut_markdown(reports_dir), elem_id="about-shortcuts")
    return demo


def _report_image(path: Path | None, label: str) -> None:
    """A committed report figure, when it exists (the markdown above it says how to make it)."""
    if path is not None and path.exists():
        gr.Image(str(path), label=label, interactive=False, buttons=["fullscreen"])


# ---------------------------------------------------------------------------
# Start-up.
# ---------------------------------------------------------------------------
def blocked_paths() -> list[str]:
    """Folders Gradio must never serve, whatever a request asks for (defence in depth).

    Gradio only serves its own cache and `allowed_paths` (we add none); blocking the project,
    the checkpoints and the dataset as well keeps them out even if that default changes. The
    project root is left out when Gradio's cache lives inside it (it would block our outputs).
    """
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    paths = [config.resolve_checkpoint_dir(), config.resolve_data_dir(), config.resolve_reports_dir()]
    if not cache.is_relative_to(config.PROJECT_ROOT):
        paths.append(config.PROJECT_ROOT)
    return [str(p) for p in paths if not cache.is_relative_to(p)]


def create_app(checkpoint_dir=None, weights_path=None) -> gr.Blocks:
    """Load and warm every model once (threads sized for 2 vCPUs), then build the UI."""
    configure_cpu_threads(intra_op=2, inter_op=1)
    predictor = Predictor.from_checkpoints(checkpoint_dir, weights_path)
    return build_demo(predictor)


def launch(demo: gr.Blocks, **kwargs) -> None:
    """Serve with a small queue and an upload limit; host and port come from GRADIO_SERVER_*."""
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    # Uploaded X-rays are patient data: Gradio's run history (kept in the browser, or in a
    # Hugging Face bucket a visitor connects) stays off.
    kwargs.setdefault("run_history", False)
    demo.launch(max_file_size=config.MAX_UPLOAD_BYTES, blocked_paths=blocked_paths(), **kwargs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = create_app()
    launch(demo)
