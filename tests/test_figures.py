"""The figures of the evaluate stage and the pull-request report: names drawn as written."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnpipe import report
from cnnpipe.core.dataset import Split
from cnnpipe.evaluate import figures, metrics
from cnnpipe.evaluate.metrics import Evaluation

# a folder name math text cannot parse (it would stop the stage), and one it would typeset
CLASSES = [r"$\foo$", "$x^2$", "plain"]


def test_class_names_that_look_like_math_text_are_drawn_as_plain_text(tmp_path):
    y_true, y_pred = np.array([0, 1, 2, 0]), np.array([1, 1, 2, 2])
    probabilities = np.eye(3)[y_pred]
    result = Evaluation(y_true, y_pred, {"test_accuracy": 0.5}, [], probabilities, probabilities)
    split = Split(np.zeros((4, 1, 8, 8), np.uint8), y_true, ["a", "b", "c", "d"])
    figures.confusion_figure(result, CLASSES, tmp_path / "confusion.png")
    assert figures.misclassified_figure(result, split, CLASSES, tmp_path / "wrong.png", 9) == 2
    for name in ("confusion.png", "wrong.png"):
        assert Image.open(tmp_path / name).size[0] > 100


def test_report_curves_draw_revision_names_as_written(tmp_path):
    rows = [
        {"rev": rev, "filename::field": "loss.tsv::loss", "step": step, "dvc_inferred_y_value": y}
        for rev in (r"$\foo$", "workspace")
        for step, y in ((0, 1.0), (1, 0.5))
    ]
    report.draw_curves(
        "Loss", {"anchor_definitions": {"<DVC_METRIC_DATA>": rows}}, tmp_path / "l.png"
    )
    assert Image.open(tmp_path / "l.png").size == (550, 350)


@pytest.mark.parametrize("seed", range(4))
def test_scores_are_scikit_learns_to_the_bit(seed):
    """With classes never predicted and classes absent from the labels (zero_division=0)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    classes = 7
    y_true = rng.integers(0, classes - 2, 60)  # the last two classes have no image
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(1, classes, 60))
    every = list(range(classes))
    counts = metrics.confusion(y_true, y_pred, classes)
    assert np.array_equal(counts, confusion_matrix(y_true, y_pred, labels=every))
    ours = metrics.class_scores(counts)
    theirs = precision_recall_fscore_support(y_true, y_pred, labels=every, zero_division=0)
    for mine, sklearns in zip(ours, theirs, strict=True):
        assert np.array_equal(mine, sklearns)
    macro = precision_recall_fscore_support(
        y_true, y_pred, labels=every, average="macro", zero_division=0
    )
    assert [float(np.mean(x)) for x in ours[:3]] == list(macro[:3])
    assert float(np.mean(y_true == y_pred)) == accuracy_score(y_true, y_pred)


def test_the_evaluate_stage_does_not_import_scikit_learn():
    code = "import sys; import cnnpipe.evaluate.figures; print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
