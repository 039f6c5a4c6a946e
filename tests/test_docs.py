"""The README and docs/ point only at what exists: every relative link and #anchor resolves, every
bench/, stages/, src/ and tests/ path they name is there, and every params key they name is in
params.yaml. External links are not fetched.

The checker takes a project root, so a test runs it on a broken sample as well as on the real
pages: a check that never fails would pass a page full of broken links.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import yaml
from conftest import REPO

SECTIONS = ("generate", "process", "train", "evaluate", "package")
CHECKED_DIRS = ("bench", "stages", "src", "tests")

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# a path under a checked folder, not part of a longer path or a URL; <...>, * and {a,b} are patterns
PATH = re.compile(rf"(?<![\w./:-])((?:{'|'.join(CHECKED_DIRS)})/[\w./<>*{{}},-]*)")
# section.key, not part of a dotted module name or a path (stages/train.py, cnnpipe.train.loop)
KEY = re.compile(rf"(?<![\w./-])({'|'.join(SECTIONS)})\.([A-Za-z_]\w*)(?![\w/])")


def pages(root: Path) -> list[Path]:
    """The pages the check reads: the README and every page in docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links and code reduced to their words),
    lowercased, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a page, repeats numbered -1, -2 as GitHub numbers them."""
    seen: Counter[str] = Counter()
    found = set()
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(2))
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def _expand(pattern: str) -> list[str]:
    """A path pattern as globs: <name> and * match anything, {a,b} is either."""
    pattern = re.sub(r"<[^>]*>", "*", pattern)
    if group := re.search(r"\{([^{}]*)\}", pattern):
        head, tail = pattern[: group.start()], pattern[group.end() :]
        return [g for part in group.group(1).split(",") for g in _expand(head + part + tail)]
    return [pattern]


def _exists(root: Path, path: str) -> bool:
    if any(c in path for c in "<*{"):
        return any(next(root.glob(g.rstrip("/")), None) for g in _expand(path))
    return (root / path).exists()


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def check_links(root: Path, page: Path, text: str) -> list[str]:
    """Relative links (code removed from text) to files that exist, at headings they have."""
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        where = f"{_rel(page, root)}: link {target}"
        if not linked.exists():
            problems.append(f"{where}: {path} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            problems.append(f"{where}: no heading #{anchor} in {_rel(linked, root)}")
    return problems


def check_names(root: Path, page: Path, text: str, params: dict) -> list[str]:
    """Paths named anywhere but in links' targets exist; params keys named in code do."""
    problems = []
    for named in PATH.findall(re.sub(r"\]\([^)]*\)", "]", text)):
        if not _exists(root, path := named.rstrip(".,")):
            problems.append(f"{_rel(page, root)}: {path} does not exist")
    code = [m.group(0) for m in FENCE.finditer(text)]
    code += [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub("", text))]
    for section, key in sorted({k for c in code for k in KEY.findall(c)}):
        if key not in (params.get(section) or {}):
            problems.append(f"{_rel(page, root)}: {section}.{key} is not in params.yaml")
    return problems


def check(root: Path) -> list[str]:
    """Every problem of the README and docs/ under root, one line each."""
    root = root.resolve()
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    problems = []
    for page in pages(root):
        text = page.read_text()
        problems += check_links(root, page, CODE_SPAN.sub("", FENCE.sub("", text)))
        problems += check_names(root, page, text, params)
    return problems


def test_the_readme_and_docs_point_only_at_what_exists():
    assert len(pages(REPO)) > 2
    assert check(REPO) == []


def test_anchors_follow_githubs_rules():
    assert slug("Set up") == "set-up"
    assert slug("Serving: `CNNPIPE_*` settings, (and) limits!") == (
        "serving-cnnpipe_-settings-and-limits"
    )
    assert slug("See [the gate](x.md#y)") == "see-the-gate"
    text = "# Notes\n## Run\n```\n# not a heading\n```\n## Run ##\n## Run\n"
    assert anchors(text) == {"notes", "run", "run-1", "run-2"}


SAMPLE_GOOD = (
    "# Sample\n\n"
    "[page](docs/good.md), [section](docs/good.md#two-words), [here](#sample),\n"
    "[again](#sample-1), [web](https://example.com/none), `stages/train.py`,\n"
    "`stages/<stage>.py`, `cnnpipe.train.loop`, `dvc exp run -S train.epochs=2`.\n\n"
    "## Sample\n\n"
    "```bash\ndvc exp run -S train.model=resnet18  # and stages/train.py\n```\n"
)
SAMPLE_BROKEN = (
    "[gone](docs/missing.md), [no such part](docs/good.md#three-words), [nor here](#nothing),\n"
    "`bench/missing.py`, `-S train.learning_rate=0.1`.\n\n"
    "```bash\ndvc exp run -S evaluate.batch_size=8\n```\n"
)


def test_a_broken_sample_is_reported_on_every_count_and_passes_once_mended(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n  model: lenet5\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "good.md").write_text("# Good page\n\n## Two words\n")
    readme = tmp_path / "README.md"
    readme.write_text(SAMPLE_GOOD + SAMPLE_BROKEN)
    assert check(tmp_path) == [
        "README.md: link docs/missing.md: docs/missing.md does not exist",
        "README.md: link docs/good.md#three-words: no heading #three-words in docs/good.md",
        "README.md: link #nothing: no heading #nothing in README.md",
        "README.md: bench/missing.py does not exist",
        "README.md: evaluate.batch_size is not in params.yaml",
        "README.md: train.learning_rate is not in params.yaml",
    ]
    readme.write_text(SAMPLE_GOOD)
    assert check(tmp_path) == []
