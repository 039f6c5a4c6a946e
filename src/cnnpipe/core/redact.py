"""Text from outside made safe to print: names a user chose (multipart field names, request
paths, class folder names) escaped so that they cannot forge a log line, and URIs stripped of the
credentials they may carry (`https://user:token@host`, as MLflow and DVC remotes accept them)."""

from __future__ import annotations

import re

# scheme://userinfo@ : everything between the scheme and the last @ before the host's end
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")


def printable(text: str) -> str:
    """`text` with control characters, backslashes and non-printable code points escaped as
    Python's repr escapes them (a newline becomes the two characters \\n), quotes left as they
    are: one line whatever it holds."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


def without_credentials(text: str) -> str:
    """`text` with the user and password of every URI in it replaced by ***."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)
