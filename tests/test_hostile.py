"""Hostile and careless input (issue #8): each test is one way a user's files or secrets could be
hurt, run against the real CLI where the harm would happen.  No file outside the project is touched,
no credential is written or printed, no spec value becomes a shell word or a Dockerfile line, and
bad input is one clear message with a documented exit code.
"""

from __future__ import annotations

import pytest

from mlenv import validate


# --- the validators every reader uses -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["x/../../victim", "cpu\n", "../cpu", ".hidden", "-rf", "a b", "", "é"])
def test_names_that_could_reach_a_path_or_option_are_refused(value):
    assert validate.name(value) is not None


@pytest.mark.parametrize("value", ["cpu", "cuda-12.4", "gpu_1", "A100"])
def test_plain_names_pass(value):
    assert validate.name(value) is None


@pytest.mark.parametrize("check,value", [
    (validate.posix_user, "app; touch x"), (validate.posix_user, "app\n"), (validate.posix_user, "root"),
    (validate.debian_package, "git curl"), (validate.debian_package, "git\nRUN touch x"),
    (validate.image_reference, "python:3.11\nRUN touch x"), (validate.image_reference, "python:3.11 AS evil"),
    (validate.relative_path, "out\n!.env"), (validate.relative_path, "!.env"), (validate.relative_path, "../out"),
    (validate.relative_path, "/etc"), (validate.hostname, "-oProxyCommand=touch x"), (validate.box_name, "Box"),
])
def test_values_by_what_they_are(check, value):
    assert check(value) is not None


def test_inside_refuses_a_symlink_out_of_the_project(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "link").symlink_to(tmp_path)
    assert validate.inside(tmp_path / "project", "a/b") == (tmp_path / "project" / "a" / "b").resolve()
    with pytest.raises(validate.OutsideProject):
        validate.inside(tmp_path / "project", "link/victim")
    with pytest.raises(validate.OutsideProject):
        validate.inside(tmp_path / "project", "x/../../victim")


@pytest.mark.parametrize("url,clean", [
    ("https://user:pass@host/simple", "https://host/simple"),
    ("git+https://TOKEN@github.com/org/repo.git", "git+https://github.com/org/repo.git"),
    ("https://${USER}:${TOKEN}@host/simple", "https://${USER}:${TOKEN}@host/simple"),
    ("https://__token__:${TOKEN}@host/simple", "https://__token__:${TOKEN}@host/simple"),
    ("https://user:secret@host/simple", "https://host/simple"),
    ("git+ssh://git@github.com/org/repo.git", "git+ssh://git@github.com/org/repo.git"),
])
def test_redact_url(url, clean):
    assert validate.redact_url(url) == clean


def test_shell_word_quotes_and_refuses_line_breaks():
    assert validate.shell_word("app; touch x") == "'app; touch x'"
    with pytest.raises(validate.UnsafeValue):
        validate.shell_word("git\nRUN touch /x")
