"""Teaching quiz: a student classifies test X-rays and is scored against DavidNet and CheXNet.

A quiz is an immutable :class:`QuizState` moved on by pure functions:

    pool = build_pool("hard", models=predictor.available_models)   # or "all"
    state = new_quiz(pool, "hard", seed=7, models=predictor.available_models)
    state = answer(state, "Normal", {"davidnet": "Covid", "chexnet": None})   # asking -> revealed
    state = next_question(state)                                           # -> asking | finished
    score_markdown(state)

Phases: "asking" (the current image is shown, nothing else), "revealed" (truth and the models'
live predictions are known) and "finished" (every question of the pool was asked). The state lives
in the browser session (`gr.State`, server memory, dropped with the session); nothing is written
to disk. What the page shows before the reveal carries no hint of the answer: the image is a
decoded array (`question_image`), never a dataset path, whose folder name is the class.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from covid_xray import imaging, report
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, DECODE_DRAFT_SIZE, MODELS

logger = logging.getLogger(__name__)

# Question pools the student can choose from.
MODES: dict[str, str] = {
    "all": "All test images",
    "hard": "Hard cases (a model got them wrong)",
}
PHASES = ("asking", "revealed", "finished")
STUDENT = "student"
STUDENT_DISPLAY_NAME = "You"


class QuizError(ValueError):
    """The quiz cannot do what was asked (wrong phase, empty pool, no data); the message is for people."""


@dataclass(frozen=True)
class Question:
    """One test image: its dataset-relative path (`test/Covid/0100.jpeg`) and true class."""

    file: str
    truth: str


@dataclass(frozen=True)
class Turn:
    """One answered question: the student's choice and each model's live prediction (None: no answer)."""

    question: Question
    choice: str
    predictions: tuple[tuple[str, str | None], ...]

    @property
    def student_correct(self) -> bool:
        return self.choice == self.question.truth


@dataclass(frozen=True)
class Score:
    """A participant's running score; `installed` is False for a model the app could not load."""

    answered: int = 0
    correct: int = 0
    installed: bool = True

    def text(self) -> str:
        if not self.installed:
            return "not installed"
        if not self.answered:
            return "0 / 0"
        return f"{self.correct} / {self.answered} ({self.correct / self.answered:.0%})"


@dataclass(frozen=True)
class QuizState:
    """Everything about one session's quiz; never mutated (every step returns a new state).

    `order` is the seeded shuffle of the pool, `position` the index of the current question
    (`len(order)` once finished), `models` the models that take part (the installed ones).
    """

    mode: str
    seed: int
    order: tuple[Question, ...]
    position: int
    phase: str
    models: tuple[str, ...]
    history: tuple[Turn, ...] = ()

    @property
    def current(self) -> Question | None:
        """The question being asked or just revealed; None once finished."""
        return self.order[self.position] if self.position < len(self.order) else None

    @property
    def remaining(self) -> tuple[Question, ...]:
        """Questions still to come after the current one."""
        return self.order[self.position + 1 :]

    @property
    def scores(self) -> dict[str, Score]:
        """{"student": ..., model name: ...} for every model in the registry, in registry order."""
        scores = {STUDENT: Score(len(self.history), sum(t.student_correct for t in self.history))}
        for name in MODELS:
            if name not in self.models:
                scores[name] = Score(installed=False)
                continue
            answers = [(dict(t.predictions).get(name), t.question.truth) for t in self.history]
            answers = [(p, truth) for p, truth in answers if p is not None]
            scores[name] = Score(len(answers), sum(p == truth for p, truth in answers))
        return scores


# ---------------------------------------------------------------------------
# Question pools.
# ---------------------------------------------------------------------------
def _test_samples(data_dir: str | os.PathLike | None) -> dict[str, str]:
    """{dataset-relative path: class} of the test split under the data root."""
    from covid_xray.data import DatasetNotFoundError, list_samples

    if not report.data_available(data_dir):
        raise QuizError(report.missing_data_message(data_dir))
    try:
        return {s.relpath: s.label for s in list_samples(data_dir, "test")}
    except DatasetNotFoundError as exc:
        raise QuizError(str(exc)) from exc


def hard_files(models: Iterable[str] | None = None, reports_dir: str | os.PathLike | None = None) -> set[str]:
    """Test files that at least one of `models` misclassified in its committed predictions.csv.

    Raises:
        QuizError: none of `models` has a predictions.csv (says what to run), or one is malformed.
    """
    models = list(MODELS if models is None else models)
    files, evaluated = set(), []
    for name in models:
        try:
            rows = report.load_predictions(name, reports_dir)
        except report.ReportError as exc:
            raise QuizError(f"Cannot read the evaluation outputs: {exc}") from exc
        if rows is None:
            continue
        evaluated.append(name)
        files.update(row.file for row in rows if not row.correct)
    if not evaluated:
        raise QuizError(
            "Hard cases are the test images an installed model got wrong in its evaluation, and no "
            "installed model has been evaluated on this server yet: choose all test images instead."
        )
    return files


def build_pool(
    mode: str = "all",
    data_dir: str | os.PathLike | None = None,
    reports_dir: str | os.PathLike | None = None,
    models: Iterable[str] | None = None,
) -> tuple[Question, ...]:
    """The quiz's questions: every test image under the data root, or only the hard cases.

    Args:
        mode: "all" or "hard" (test images misclassified by at least one of `models` according
            to the committed predictions.csv; images absent from the data root are left out).
        models: the installed models (default: every registered model).

    Raises:
        QuizError: unknown mode, dataset absent (with how to get it), nothing to ask.
    """
    if mode not in MODES:
        raise QuizError(f"Unknown quiz mode {mode!r}; expected one of {sorted(MODES)}.")
    samples = _test_samples(data_dir)
    if mode == "hard":
        hard = hard_files(models, reports_dir)
        samples = {file: label for file, label in samples.items() if file in hard}
    if not samples:
        raise QuizError(f"No test images for the quiz ({MODES[mode].lower()}) on this server.")
    return tuple(Question(file, label) for file, label in samples.items())


def question_path(question: Question, data_dir: str | os.PathLike | None = None) -> Path:
    """Absolute path of a question's image under the data root (kept inside it)."""
    try:
        return report.resolve_dataset_file(question.file, data_dir)
    except report.ReportError as exc:
        raise QuizError(str(exc)) from exc


def question_image(question: Question, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The question's X-ray as a uint8 RGB array at display size: no path, name or metadata to give it away.

    Raises:
        QuizError: the image cannot be read (the message names no file: it would reveal the class).
    """
    from covid_xray.inference import display_image

    try:
        path = question_path(question, data_dir)
        return display_image(imaging.load_image(str(path), draft_size=DECODE_DRAFT_SIZE))
    except (OSError, imaging.ImageDecodeError, QuizError) as exc:
        logger.warning("Quiz image %s unreadable: %s", question.file, exc)
        raise QuizError(
            "This test image could not be read (details in the server log); start a new quiz."
        ) from exc


# ---------------------------------------------------------------------------
# The state machine.
# ---------------------------------------------------------------------------
def new_seed() -> int:
    """A fresh random seed for one session's question order."""
    return secrets.randbits(32)


def new_quiz(
    pool: Sequence[Question],
    mode: str = "all",
    seed: int | None = None,
    models: Iterable[str] | None = None,
) -> QuizState:
    """Start a quiz on `pool`, shuffled by `seed` (same seed, same order), asking the first question.

    Args:
        models: the models that take part (default every registered model); the others are
            shown as "not installed", never counted as wrong.

    Raises:
        QuizError: empty pool, unknown mode or model.
    """
    if mode not in MODES:
        raise QuizError(f"Unknown quiz mode {mode!r}; expected one of {sorted(MODES)}.")
    if not pool:
        raise QuizError("The quiz has no questions.")
    models = tuple(MODELS if models is None else models)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise QuizError(f"Unknown models {unknown}; expected some of {list(MODELS)}.")
    seed = new_seed() if seed is None else int(seed)
    order = list(pool)
    random.Random(seed).shuffle(order)
    return QuizState(mode=mode, seed=seed, order=tuple(order), position=0, phase="asking", models=models)


# Why an action does not fit the quiz's phase, by the phase it is in.
_WRONG_PHASE = {
    "asking": "Answer this question first.",
    "revealed": "This question is already answered: click Next.",
    "finished": "The quiz is over: start a new quiz.",
}


def _require_phase(state: QuizState | None, phase: str) -> QuizState:
    if state is None:
        raise QuizError("Start a quiz first (New quiz).")
    if state.phase != phase:
        raise QuizError(_WRONG_PHASE[state.phase])
    return state


def ensure_asking(state: QuizState | None) -> QuizState:
    """`state`, if it is waiting for an answer.

    Raises:
        QuizError: no quiz yet, the answer was already given, or the quiz is over.
    """
    return _require_phase(state, "asking")


def answer(state: QuizState | None, choice: str, model_predictions: Mapping[str, str | None]) -> QuizState:
    """Record the student's `choice` and the models' predictions of the current image; reveal it.

    Args:
        choice: a class name (`config.CLASS_NAMES`).
        model_predictions: {model name: predicted class, or None when it has no answer}; models
            that do not take part are ignored, and a missing or None prediction is not counted.

    Raises:
        QuizError: not in the "asking" phase, or a class name that does not exist.
    """
    state = ensure_asking(state)
    if choice not in CLASS_NAMES:
        raise QuizError(f"Unknown answer {choice!r}; expected one of {CLASS_NAMES}.")
    predictions = []
    for name in state.models:
        predicted = model_predictions.get(name)
        if predicted is not None and predicted not in CLASS_NAMES:
            raise QuizError(f"{MODELS[name].display_name} predicted an unknown class {predicted!r}.")
        predictions.append((name, predicted))
    turn = Turn(state.current, choice, tuple(predictions))
    return replace(state, phase="revealed", history=(*state.history, turn))


def next_question(state: QuizState | None) -> QuizState:
    """After a reveal: ask the next question, or finish when the pool is exhausted.

    Raises:
        QuizError: no quiz, the current question is not answered yet, or the quiz is over.
    """
    state = _require_phase(state, "revealed")
    position = state.position + 1
    phase = "asking" if position < len(state.order) else "finished"
    return replace(state, position=position, phase=phase)


# ---------------------------------------------------------------------------
# Text for the page.
# ---------------------------------------------------------------------------
def question_markdown(state: QuizState) -> str:
    """Where the student is: question number and pool; no hint of the answer."""
    pool = MODES[state.mode].lower()
    if state.phase == "finished":
        return (
            f"**Quiz finished**: all {len(state.order)} questions asked ({pool}). "
            "Click **New quiz** to play again."
        )
    text = f"**Question {state.position + 1} of {len(state.order)}**: {pool}."
    if state.phase == "asking":
        text += " Normal, Viral Pneumonia or COVID-19?"
    return text


def reveal_markdown(
    state: QuizState,
    reports_dir: str | os.PathLike | None = None,
    examples_file: str | os.PathLike | None = None,
) -> str:
    """The last answered question: the truth, whether the student was right, each model's call."""
    if state.phase != "revealed" or not state.history:
        return ""
    turn = state.history[-1]
    truth = CLASS_DISPLAY_NAMES[turn.question.truth]
    verdict = "correct" if turn.student_correct else "incorrect"
    lines = [
        f"### Truth: {truth}",
        f"You answered **{CLASS_DISPLAY_NAMES[turn.choice]}**: **{verdict}**.",
    ]
    predictions = dict(turn.predictions)
    for name, spec in MODELS.items():
        predicted = predictions.get(name)
        if name not in state.models:
            lines.append(f"- {spec.display_name}: not installed")
        elif predicted is None:
            lines.append(f"- {spec.display_name}: no prediction")
        else:
            right = "correct" if predicted == turn.question.truth else "incorrect"
            lines.append(f"- {spec.display_name}: {CLASS_DISPLAY_NAMES[predicted]} ({right})")
    lines.append(f"\nImage: `{turn.question.file}` (test split).")
    lines.append(teaching_note(turn.question, reports_dir, examples_file))
    return "\n".join(lines)


def teaching_note(
    question: Question,
    reports_dir: str | os.PathLike | None = None,
    examples_file: str | os.PathLike | None = None,
) -> str:
    """What a teacher would add after the answer: the curated note where the image has one, else the
    facts the project knows (source collection, child or adult, whether a copy is in training)."""
    from covid_xray.neighbours import provenance

    try:
        notes = {e.file: e.note for e in report.load_examples(examples_file)}
    except report.ReportError:
        notes = {}
    if question.file in notes:
        return f"**Teaching note:** {notes[question.file]}"
    source, age = provenance(question.file, question.truth)
    facts = [f"from the {source}", "a child's film" if age == "child" else f"age: {age}"]
    leaked = report.leaked_test_files(reports_dir)
    if leaked is not None:
        facts.append(
            "a copy of it is in the training set (a model may answer from memory)"
            if question.file in leaked
            else "no copy of it in the training set"
        )
    return "**About this image:** " + "; ".join(facts) + "."


def score_markdown(state: QuizState | None) -> str:
    """The session's running score: the student against each model (correct / answered)."""
    if state is None:
        return ""
    names = participants()
    answered = len(state.history)
    lines = [
        f"**Score**: answered: {answered} of {len(state.order)}",
        "",
        "| | correct / answered |",
        "|---|---|",
    ]
    lines += [f"| {names[who]} | {score.text()} |" for who, score in state.scores.items()]
    lines.append("\nModels are scored on their live prediction of each image you answered.")
    return "\n".join(lines)


def participants() -> dict[str, str]:
    """{participant key: display name}: the student, then every registered model."""
    return {STUDENT: STUDENT_DISPLAY_NAME, **{n: s.display_name for n, s in MODELS.items()}}
