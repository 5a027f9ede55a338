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


# --- item 1, 5, 6: the lock is untrusted input -----------------------------------------------------------

import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402

import tomli_w  # noqa: E402

from mlenv.fsutil import content_digest  # noqa: E402
from tests.conftest import run_mlenv  # noqa: E402


def write_spec(folder: Path, index_url: str, *, extra: str = "", project: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlenv.toml").write_text(
        f'[project]\nname = "demo"\npython = "3.11"\ndependencies = ["tinylib"]\n{project}\n'
        f'[dependency-groups]\ndev = ["devtool"]\n\n'
        f'[[index]]\nname = "local"\nurl = "{index_url}"\ndefault = true\n\n'
        f'[targets.cpu]\nplatform = "linux/x86_64"\n{extra}'
    )
    return folder / "mlenv.toml"


@pytest.fixture
def locked(tmp_path, local_index) -> Path:
    """A project locked against the loopback index, one folder below tmp_path."""
    project = tmp_path / "project"
    write_spec(project, local_index.url)
    run_mlenv("lock", cwd=project, check=True)
    return project


def rewrite_lock(project: Path, edit, *, sign: bool) -> None:
    """Edit the parsed lock; ``sign`` recomputes the content digest as a deliberate attacker would."""
    data = tomllib.loads((project / "mlenv.lock").read_text())
    edit(data)
    if sign:
        data["lock"].pop("content-sha256", None)
        data["lock"]["content-sha256"] = content_digest(data)
    (project / "mlenv.lock").write_text(tomli_w.dumps(data))


def assert_corrupt_everywhere(project: Path) -> None:
    """lock --check (fast path included), sync and doctor agree: exit 4 and the way out."""
    for command in (["lock", "--check"], ["sync", "--target", "cpu"], ["doctor", "--target", "cpu"]):
        result = run_mlenv(*command, cwd=project)
        assert result.returncode == 4, (command, result.stdout, result.stderr)
        assert "corrupt" in result.stderr and "re-run `mlenv lock`" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_tampered_target_name_in_the_lock_touches_no_file_outside(locked):
    victim = locked.parent / "victim.toml"
    victim.write_text("precious\n")
    (locked.parent / "pylock.x").mkdir()  # so that the traversal would resolve

    def add_target(data):
        evil = dict(data["target"][0], name="x/../../victim")
        evil["pylock"] = {"path": "pylock.x/../../victim.toml", "sha256": "0" * 64}
        data["target"].append(evil)

    rewrite_lock(locked, add_target, sign=True)
    result = run_mlenv("lock", cwd=locked)
    assert victim.read_text() == "precious\n"
    assert result.returncode == 0 and "x/../../victim" in result.stderr  # re-locked from scratch, said why
    assert [t["name"] for t in tomllib.loads((locked / "mlenv.lock").read_text())["target"]] == ["cpu"]

    rewrite_lock(locked, add_target, sign=True)
    for command in (["lock", "--check"], ["sync", "--target", "cpu"], ["doctor", "--target", "cpu"]):
        result = run_mlenv(*command, cwd=locked)
        assert result.returncode == 4 and "invalid name 'x/../../victim'" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n"


def test_target_name_with_a_trailing_newline_is_refused_in_the_spec(tmp_path, local_index):
    write_spec(tmp_path, local_index.url, extra='\n[targets."gpu\\n"]\nplatform = "linux/x86_64"\n')
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3 and "invalid target name 'gpu\\n'" in result.stderr, result.stderr
    assert not (tmp_path / "mlenv.lock").exists()


def test_an_edited_pin_in_the_lock_is_corrupt_for_every_command(locked):
    def downgrade(data):
        tinylib = next(p for p in data["package"] if p["name"] == "tinylib")
        tinylib["version"] = "0.1"

    rewrite_lock(locked, downgrade, sign=False)
    assert_corrupt_everywhere(locked)
    run_mlenv("lock", cwd=locked, check=True)  # the advice works
    run_mlenv("lock", "--check", cwd=locked, check=True)


def test_an_edited_sha256_in_the_lock_is_corrupt(locked):
    def swap_hash(data):
        data["package"][0]["artifacts"][0]["sha256"] = "f" * 64

    rewrite_lock(locked, swap_hash, sign=False)
    assert_corrupt_everywhere(locked)


@pytest.mark.parametrize("edit", [
    lambda data: data["lock"].update(version="1"),
    lambda data: data["target"][0].update({"gpu-count": "2"}),
    lambda data: data["package"][0].update(targets="cpu"),
    lambda data: data["target"][0].pop("input-hash"),
], ids=["version-as-string", "gpu-count-as-string", "targets-not-a-list", "missing-input-hash"])
@pytest.mark.parametrize("sign", [False, True], ids=["careless", "re-signed"])
def test_wrong_types_are_corrupt_for_lock_check_sync_and_doctor(locked, edit, sign):
    rewrite_lock(locked, edit, sign=sign)
    if sign:
        # a re-signed lock is trusted by the digest-only fast path; the full check must still refuse it
        for command in (["lock", "--check", "--spec", "mlenv.toml"], ["sync", "--target", "cpu"], ["doctor"]):
            result = run_mlenv(*command, cwd=locked)
            assert result.returncode == 4 and "corrupt" in result.stderr, (command, result.stderr)
    else:
        assert_corrupt_everywhere(locked)


def test_non_utf8_lock_is_corrupt_not_a_traceback(locked):
    (locked / "mlenv.lock").write_bytes(b"\xff\xfe[lock]\n")
    assert_corrupt_everywhere(locked)
