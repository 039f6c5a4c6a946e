"""The figures of the evaluate stage and the pull-request report: names drawn as written."""

import numpy as np
from PIL import Image

from cnnpipe import report
from cnnpipe.core.dataset import Split
from cnnpipe.evaluate import figures
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
