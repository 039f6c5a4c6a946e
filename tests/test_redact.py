"""Text from outside, made safe to print."""

from cnnpipe.core import stage
from cnnpipe.core.redact import printable, without_credentials


def test_a_name_cannot_forge_a_log_line():
    forged = "cat\n2026-01-01 INFO 200 POST /predict\r\x1b[2J\u2028"
    shown = printable(forged)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown and "\u2028" not in shown
    assert shown == "cat\\n2026-01-01 INFO 200 POST /predict\\r\\x1b[2J\\u2028"
    assert printable("a\\nb") == "a\\\\nb"  # a backslash cannot pass for an escape
    assert printable("chat noir, 猫 'x'") == "chat noir, 猫 'x'"  # printable text is kept


def test_uris_lose_their_credentials_and_keep_the_rest():
    assert (
        without_credentials("https://user:secret@host:5000/x?y=1") == "https://***@host:5000/x?y=1"
    )
    assert (
        without_credentials("at s3://KEY:SECRET@bucket/p (error)") == "at s3://***@bucket/p (error)"
    )
    assert (
        without_credentials("http://token@h and ssh://u@g:22/r")
        == "http://***@h and ssh://***@g:22/r"
    )
    for kept in ("sqlite:////tmp/mlflow.db", "https://host/a@b", "user@example.com"):
        assert without_credentials(kept) == kept


def test_stage_progress_stays_one_line_whatever_a_folder_name_holds(capsys):
    stage.progress("generate: skipped images/cat\nerror: forged/x.png: not a readable image")
    assert (
        capsys.readouterr().out
        == "generate: skipped images/cat\\nerror: forged/x.png: not a readable image\n"
    )
