"""The teaching quiz's state machine (covid_xray.quiz), on a synthetic data root and reports.

The data root here holds generated noise PNGs laid out like the dataset (no dataset image is
copied); predictions.csv files are written in the documented format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_xray import quiz, report
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS
from covid_xray.quiz import Question, QuizError
from tests.app_fixtures import write_predictions_csv

PER_CLASS = 4


@pytest.fixture
def fake_data(tmp_path) -> Path:
    """<root>/test/<class>/case<i>.png: PER_CLASS generated images per class."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in CLASS_NAMES:
        folder = root / "test" / label
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 255, (64, 80), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"case{i}.png")
    return root


def _pool(n: int = 20) -> tuple[Question, ...]:
    return tuple(Question(f"test/{CLASS_NAMES[i % 3]}/{i:04d}.png", CLASS_NAMES[i % 3]) for i in range(n))


def _other(label: str) -> str:
    return next(c for c in CLASS_NAMES if c != label)


# ---------------------------------------------------------------------------
# Ordering.
# ---------------------------------------------------------------------------
def test_order_is_a_seeded_shuffle_of_the_pool():
    pool = _pool()
    first = quiz.new_quiz(pool, "all", seed=11)
    assert quiz.new_quiz(pool, "all", seed=11).order == first.order  # same seed, same order
    assert sorted(first.order, key=lambda q: q.file) == sorted(pool, key=lambda q: q.file)
    assert quiz.new_quiz(pool, "all", seed=12).order != first.order
    assert first.order != pool  # shuffled, not the (class-sorted) listing order
    assert (first.phase, first.position, first.current, first.history) == ("asking", 0, first.order[0], ())
    assert first.remaining == first.order[1:]
    # Without a seed every session draws its own.
    seeds = {quiz.new_quiz(pool).seed for _ in range(5)}
    assert len(seeds) > 1


def test_new_quiz_refuses_bad_input():
    with pytest.raises(QuizError, match="no questions"):
        quiz.new_quiz((), "all", seed=1)
    with pytest.raises(QuizError, match="Unknown quiz mode"):
        quiz.new_quiz(_pool(), "easy", seed=1)
    with pytest.raises(QuizError, match="Unknown models"):
        quiz.new_quiz(_pool(), "all", seed=1, models=("resnet",))


# ---------------------------------------------------------------------------
# Answering and scoring.
# ---------------------------------------------------------------------------
def test_answer_scores_student_and_models():
    state = quiz.new_quiz(_pool(6), "all", seed=3)
    truth = state.current.truth
    wrong = _other(truth)
    revealed = quiz.answer(state, truth, {"davidnet": truth, "chexnet": wrong})
    assert state.phase == "asking" and state.history == ()  # the old state is untouched
    assert revealed.phase == "revealed" and revealed.current == state.current
    scores = revealed.scores
    assert list(scores) == ["student", *MODELS]
    assert (scores["student"].answered, scores["student"].correct) == (1, 1)
    assert (scores["davidnet"].answered, scores["davidnet"].correct) == (1, 1)
    assert (scores["chexnet"].answered, scores["chexnet"].correct) == (1, 0)

    state = quiz.next_question(revealed)
    assert state.phase == "asking" and state.position == 1
    truth = state.current.truth
    state = quiz.answer(state, _other(truth), {"davidnet": truth, "chexnet": truth})
    scores = state.scores
    assert (scores["student"].answered, scores["student"].correct) == (2, 1)
    assert (scores["davidnet"].correct, scores["chexnet"].correct) == (2, 1)
    assert scores["student"].text() == "1 / 2 (50%)"

    reveal = quiz.reveal_markdown(state)
    assert f"Truth: {CLASS_DISPLAY_NAMES[truth]}" in reveal
    assert "**incorrect**" in reveal and state.current.file in reveal
    assert "- DavidNet: " + CLASS_DISPLAY_NAMES[truth] + " (correct)" in reveal
    score = quiz.score_markdown(state)
    assert "answered: 2 of 6" in score
    assert "| You | 1 / 2 (50%) |" in score and "| DavidNet | 2 / 2 (100%) |" in score
    assert "| CheXNet | 1 / 2 (50%) |" in score


def test_answer_validates_the_choice_and_predictions():
    state = quiz.new_quiz(_pool(3), "all", seed=0)
    with pytest.raises(QuizError, match="Unknown answer"):
        quiz.answer(state, "COVID-19", {})  # display names are not class names
    with pytest.raises(QuizError, match="unknown class"):
        quiz.answer(state, "Normal", {"davidnet": "Pneumonia"})


def test_phase_errors():
    state = quiz.new_quiz(_pool(2), "all", seed=5)
    with pytest.raises(QuizError, match="Answer this question first"):
        quiz.next_question(state)
    revealed = quiz.answer(state, "Normal", {})
    with pytest.raises(QuizError, match="already answered"):
        quiz.answer(revealed, "Covid", {})
    for step in (lambda s: quiz.answer(s, "Normal", {}), quiz.next_question):
        with pytest.raises(QuizError, match="Start a quiz first"):
            step(None)


def test_quiz_finishes_after_the_whole_pool():
    pool = _pool(3)
    state = quiz.new_quiz(pool, "all", seed=9)
    asked = []
    for _ in pool:
        asked.append(state.current)
        state = quiz.next_question(quiz.answer(state, "Covid", {"davidnet": "Covid", "chexnet": None}))
    assert state.phase == "finished" and state.current is None and state.remaining == ()
    assert sorted(asked, key=lambda q: q.file) == sorted(pool, key=lambda q: q.file)  # each once
    assert state.scores["student"].answered == 3
    assert state.scores["student"].correct == sum(q.truth == "Covid" for q in pool)
    with pytest.raises(QuizError, match="quiz is over"):
        quiz.answer(state, "Covid", {})
    with pytest.raises(QuizError, match="quiz is over"):
        quiz.next_question(state)
    assert "Quiz finished" in quiz.question_markdown(state) and quiz.reveal_markdown(state) == ""


def test_a_model_that_is_not_installed_is_never_counted_wrong():
    state = quiz.new_quiz(_pool(4), "all", seed=2, models=("davidnet",))
    truth = state.current.truth
    # Whatever the page passes for CheXNet is ignored: it does not take part.
    state = quiz.answer(state, truth, {"davidnet": _other(truth), "chexnet": _other(truth)})
    scores = state.scores
    assert scores["chexnet"].installed is False and scores["chexnet"].answered == 0
    assert scores["chexnet"].text() == "not installed"
    assert (scores["davidnet"].answered, scores["davidnet"].correct) == (1, 0)
    assert "| CheXNet | not installed |" in quiz.score_markdown(state)
    assert "- CheXNet: not installed" in quiz.reveal_markdown(state)

    # An installed model without an answer for an image is not counted either.
    state = quiz.new_quiz(_pool(4), "all", seed=2)
    state = quiz.answer(state, "Normal", {"davidnet": None})
    assert state.scores["davidnet"].answered == state.scores["chexnet"].answered == 0
    assert state.scores["davidnet"].installed is True
    assert "- DavidNet: no prediction" in quiz.reveal_markdown(state)


# ---------------------------------------------------------------------------
# Pools from the data root and the committed predictions.
# ---------------------------------------------------------------------------
def test_all_pool_lists_the_test_split_with_folder_labels(fake_data):
    pool = quiz.build_pool("all", data_dir=fake_data)
    assert len(pool) == PER_CLASS * len(CLASS_NAMES)
    for question in pool:
        split, label, _ = question.file.split("/")
        assert split == "test" and question.truth == label
        assert quiz.question_path(question, fake_data).is_file()


def test_hard_pool_is_what_an_installed_model_got_wrong(fake_data, tmp_path):
    reports = tmp_path / "reports"
    rows_d = [
        ("test/Covid/case0.png", "Covid", "Normal", 0),  # DavidNet wrong
        ("test/Normal/case1.png", "Normal", "Normal", 0),
        ("test/Viral Pneumonia/case2.png", "Viral Pneumonia", "Viral Pneumonia", 1),
        ("test/Normal/gone.png", "Normal", "Covid", 0),  # wrong, but not under the data root
    ]
    rows_c = [
        ("test/Covid/case0.png", "Covid", "Covid", 0),
        ("test/Normal/case1.png", "Normal", "Covid", 0),  # CheXNet wrong
        ("test/Viral Pneumonia/case2.png", "Viral Pneumonia", "Viral Pneumonia", 1),
    ]
    write_predictions_csv(MODELS["davidnet"].report_dir(reports) / "predictions.csv", rows_d)
    write_predictions_csv(MODELS["chexnet"].report_dir(reports) / "predictions.csv", rows_c)

    def files(models):
        return sorted(q.file for q in quiz.build_pool("hard", fake_data, reports, models))

    assert files(("davidnet",)) == ["test/Covid/case0.png"]
    assert files(("chexnet",)) == ["test/Normal/case1.png"]
    assert files(None) == ["test/Covid/case0.png", "test/Normal/case1.png"]
    assert quiz.hard_files(("davidnet",), reports) == {"test/Covid/case0.png", "test/Normal/gone.png"}
    truths = {q.file: q.truth for q in quiz.build_pool("hard", fake_data, reports)}
    assert truths == {"test/Covid/case0.png": "Covid", "test/Normal/case1.png": "Normal"}


def test_hard_pool_without_an_evaluation_says_what_to_do(fake_data, tmp_path):
    with pytest.raises(
        QuizError, match="no installed model has been evaluated on this server yet: choose all"
    ):
        quiz.build_pool("hard", fake_data, tmp_path / "no_reports", ("chexnet",))
    broken = MODELS["davidnet"].report_dir(tmp_path / "broken") / "predictions.csv"
    broken.parent.mkdir(parents=True)
    broken.write_text("file,true\ntest/Covid/case0.png,Covid\n")
    with pytest.raises(QuizError, match="Cannot read the evaluation outputs"):
        quiz.build_pool("hard", fake_data, tmp_path / "broken", ("davidnet",))
    with pytest.raises(QuizError, match="Unknown quiz mode"):
        quiz.build_pool("easy", fake_data)


def test_no_data_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(QuizError) as info:
        quiz.build_pool("all", data_dir=tmp_path / "nowhere")
    assert str(info.value) == report.missing_data_message(tmp_path / "nowhere")
    assert "not available on this server" in str(info.value) and str(tmp_path) not in str(info.value)


# ---------------------------------------------------------------------------
# Nothing gives the answer away before the reveal.
# ---------------------------------------------------------------------------
def test_question_shows_no_file_name_or_class(fake_data):
    pool = quiz.build_pool("all", data_dir=fake_data)
    state = quiz.new_quiz(pool, "all", seed=4)
    # Find two consecutive questions of different classes.
    texts = {}
    while len(texts) < 2:
        texts.setdefault(state.current.truth, (state.current, quiz.question_markdown(state)))
        state = quiz.next_question(quiz.answer(state, "Normal", {}))
        assert quiz.reveal_markdown(state) == ""  # a new question hides the previous reveal
    (q1, text1), (q2, text2) = texts.values()
    for question, text in ((q1, text1), (q2, text2)):
        assert question.file not in text and Path(question.file).name not in text
    # The question text is the same whatever the answer, apart from its number.
    assert text1.split("**", 2)[2] == text2.split("**", 2)[2]

    image = quiz.question_image(q1, fake_data)
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (64, 80, 3)
    # The score between questions says nothing about the next image either.
    assert q1.file not in quiz.score_markdown(state)


def test_unreadable_question_image_names_no_file(fake_data):
    bad = fake_data / "test" / "Covid" / "case3.png"
    bad.write_text("not an image")
    with pytest.raises(QuizError, match="could not be read") as info:
        quiz.question_image(Question("test/Covid/case3.png", "Covid"), fake_data)
    assert "Covid" not in str(info.value) and "case3" not in str(info.value)
    with pytest.raises(QuizError):
        quiz.question_image(Question("../../etc/passwd", "Covid"), fake_data)
