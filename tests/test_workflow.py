"""The CI workflow keeps the team's secrets from pull requests.

A pull request runs its own code, and its own copy of this workflow: whatever a job it triggers
can name, that code can read. So no job a pull request triggers names a secret; the jobs that do
draw them from an environment (whose branch rule is what stops a pull request that edits this
file); secrets reach only the steps that name them; `${{ }}` values reach scripts through env:,
never pasted into their text; every action is pinned to a commit, with its version beside it;
every job says what its token may do."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import yaml
from conftest import REPO

WORKFLOW = REPO / ".github/workflows/ci.yml"
PULL_REQUEST_EVENTS = {"pull_request", "pull_request_target"}
# Conditions of a job's `if:` that no pull request meets: one of them, and-ed, keeps the job off.
NOT_ON_PULL_REQUESTS = {"github.event_name == 'push'", "github.ref == 'refs/heads/main'"}
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*['\"]?([^\s'\"#]+)['\"]?[ \t]*(#.*)?$", re.MULTILINE)
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+(\.\d+)*\b")


def strings(value: object) -> Iterator[str]:
    """Every string in a parsed YAML value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def names_secret(value: object) -> bool:
    return any("secrets." in s for s in strings(value))


def triggers(workflow: dict) -> set[str]:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    return {on} if isinstance(on, str) else set(on or ())


def runs_on_pull_requests(job: dict) -> bool:
    condition = str(job.get("if", "")).strip().removeprefix("${{").removesuffix("}}")
    if "||" in condition:
        return True
    conditions = {c.strip().replace('"', "'") for c in condition.split("&&")}
    return not conditions & NOT_ON_PULL_REQUESTS


def problems(path: Path) -> list[str]:
    """What is wrong with the workflow at path, one line each."""
    text = path.read_text()
    workflow = yaml.safe_load(text)
    found = []
    pull_requests = bool(triggers(workflow) & PULL_REQUEST_EVENTS)
    if "permissions" not in workflow:
        found.append("no top-level permissions: every job gets the default token")
    if names_secret(workflow.get("env", {})):
        found.append("the workflow's env names a secret: every step of every job gets it")
    for name, job in workflow.get("jobs", {}).items():
        steps = job.get("steps", [])
        if "permissions" not in job:
            found.append(f"job {name}: no permissions of its own")
        if names_secret(job.get("env", {})):
            found.append(f"job {name}: its env names a secret: name it in the steps that need it")
        if names_secret(job) and not job.get("environment"):
            found.append(
                f"job {name}: names a secret outside an environment: a repository secret "
                "reaches the workflow of any branch"
            )
        if pull_requests and runs_on_pull_requests(job):
            if names_secret(job) or "secrets" in job:
                found.append(f"job {name}: runs on pull requests and names a secret")
            if job.get("environment"):
                found.append(f"job {name}: runs on pull requests in an environment")
            checks_out = any(str(s.get("uses", "")).startswith("actions/checkout@") for s in steps)
            if checks_out and any("github.token" in s for s in strings(job)):
                found.append(f"job {name}: runs the pull request's code with the token")
        for number, step in enumerate(steps, 1):
            label = f"job {name}, step {step.get('name', number)}"
            if "${{" in str(step.get("run", "")):
                found.append(f"{label}: ${{{{ }}}} in run: pass the value through env:")
            uses = str(step.get("uses", ""))
            if uses.startswith("actions/checkout@"):
                if step.get("with", {}).get("persist-credentials") is not False:
                    found.append(f"{label}: checkout leaves the token in .git/config")
    for uses, comment in USES.findall(text):
        if uses.startswith("./"):
            continue
        if not PINNED.match(uses):
            found.append(f"{uses}: not pinned to a commit (owner/repo@<40 hex>)")
        elif not VERSION_COMMENT.search(comment):
            found.append(f"{uses}: pinned without its version in a comment (# vX.Y.Z)")
    return found


def test_the_ci_workflow_keeps_secrets_from_pull_requests():
    assert problems(WORKFLOW) == []
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert triggers(workflow) == {"push", "pull_request"}
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    on_pull_requests = {name for name, job in jobs.items() if runs_on_pull_requests(job)}
    assert on_pull_requests == {"pull-request", "comment"}
    assert [name for name, job in jobs.items() if names_secret(job)] == ["main"]
    # the only token that writes is the comment's, and it runs no code of the pull request
    writes = {n: j["permissions"] for n, j in jobs.items() if "write" in j["permissions"].values()}
    assert writes == {"comment": {"pull-requests": "write"}}
    comment = jobs["comment"]["steps"]
    assert not any(str(step.get("uses", "")).startswith("actions/checkout@") for step in comment)
    assert [step["run"].split()[:3] for step in comment if "run" in step] == [
        ["cml", "comment", "update"]
    ]


def test_secrets_reach_only_the_steps_that_use_them():
    main = yaml.safe_load(WORKFLOW.read_text())["jobs"]["main"]
    with_secrets = [step["name"] for step in main["steps"] if names_secret(step)]
    assert with_secrets == [
        "DVC remote",
        "Reproduce the pipeline",
        "Regression gate, then promote the model to champion",
        "Share outputs and the run-cache",
    ]
    install = next(s for s in main["steps"] if s.get("name") == "Install the locked environment")
    assert "--require-hashes" in install["run"] and "pip check" in install["run"]


BAD = """\
name: ci
on: [push, pull_request]
env:
  TRACKING: ${{ secrets.MLFLOW_TRACKING_URI }}
jobs:
  pipeline:
    runs-on: ubuntu-latest
    env:
      AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065
      - name: Baseline
        run: echo "rev=origin/${{ github.base_ref }}" >> "$GITHUB_OUTPUT"
      - name: Push
        if: github.event_name == 'push'
        env:
          KEY: ${{ secrets.KEY }}
        run: dvc push
  comment:
    runs-on: ubuntu-latest
    permissions:
      pull-requests: write
    steps:
      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1  # v7.0.1
        with:
          persist-credentials: false
      - run: cml comment update report.md
        env:
          REPO_TOKEN: ${{ github.token }}
"""


def test_the_check_finds_each_way_a_workflow_can_hand_a_pull_request_a_secret(tmp_path: Path):
    bad = tmp_path / "ci.yml"
    bad.write_text(textwrap.dedent(BAD))
    found = problems(bad)
    expected = [
        "no top-level permissions",
        "the workflow's env names a secret",
        "job pipeline: no permissions of its own",
        "job pipeline: its env names a secret",
        "job pipeline: names a secret outside an environment",
        "job pipeline: runs on pull requests and names a secret",
        "job pipeline, step 1: checkout leaves the token in .git/config",
        "job pipeline, step Baseline: ${{ }} in run",
        "actions/checkout@v4: not pinned to a commit",
        "pinned without its version in a comment",
        "job comment: runs the pull request's code with the token",
    ]
    for problem in expected:
        assert any(line.startswith(problem) or problem in line for line in found), (
            problem,
            found,
        )
    assert len(found) == len(expected), found


def test_a_job_kept_off_pull_requests_may_name_secrets_from_an_environment(tmp_path: Path):
    workflow = tmp_path / "ci.yml"
    workflow.write_text(
        textwrap.dedent("""\
        on: [push, pull_request]
        permissions: {}
        jobs:
          main:
            if: ${{ github.event_name == "push" && github.ref == 'refs/heads/main' }}
            environment: main
            permissions: {contents: read}
            runs-on: ubuntu-latest
            steps:
              - run: dvc push
                env:
                  KEY: ${{ secrets.KEY }}
          either:
            if: github.event_name == 'push' || github.event_name == 'pull_request'
            environment: main
            permissions: {contents: read}
            runs-on: ubuntu-latest
            steps:
              - run: dvc push
                env:
                  KEY: ${{ secrets.KEY }}
        """)
    )
    assert problems(workflow) == [
        "job either: runs on pull requests and names a secret",
        "job either: runs on pull requests in an environment",
    ]
