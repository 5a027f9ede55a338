"""mlenv.toml: what loads, and how every kind of bad input is reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlenv.errors import MlenvError, SpecError
from mlenv.spec import load_spec, parse_spec
from tests.conftest import run_mlenv

GOOD = """\
[project]
name = "vision"
python = "3.11"
dependencies = ["numpy>=1.26", "torch==2.5.1"]

[dependency-groups]
dev = ["pytest"]
notebook = ["jupyterlab"]

[[index]]
name = "pytorch-cpu"
url = "https://download.pytorch.org/whl/cpu"
explicit = true

[[index]]
name = "pytorch-cu124"
url = "https://download.pytorch.org/whl/cu124"
explicit = true

[sources]
torch = "pytorch-cpu"

[targets.cpu]
platform = "linux/x86_64"

[targets.gpu]
platform = "linux/x86_64"
cuda = "12.4"
gpu = "a10g"
gpu-count = 2
gpu-memory-min = 24
cpu-min = 8
ram-min = 32
sources = { torch = "pytorch-cu124" }

[targets.mac]
platform = "macos/arm64"

[image]
devel = false

[devbox]
idle = "30m"

[ci]

[sweep]
jobs = 2
"""


def parse(text: str):
    return parse_spec(text, Path("/project/mlenv.toml"))


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse(text)
    return caught.value


def test_a_full_spec_loads_with_per_target_index_pins():
    spec = parse(GOOD)
    assert spec.python == "3.11" and spec.requires_python == "==3.11.*"
    assert spec.groups == {"dev": ("pytest",), "notebook": ("jupyterlab",)}
    gpu = spec.targets["gpu"]
    assert (gpu.cuda, gpu.gpu, gpu.gpu_count, gpu.accelerator) == ("12.4", "a10g", 2, "cuda12.4")
    assert spec.sources_for(gpu) == {"torch": "pytorch-cu124"}
    assert spec.sources_for(spec.targets["cpu"]) == {"torch": "pytorch-cpu"}
    assert spec.targets["mac"].python_platform == "aarch64-apple-darwin"
    assert spec.sweep.jobs == 2 and spec.sweep.written() == {"jobs": 2} and spec.image.user is None


def test_malformed_toml_points_at_line_and_column():
    error = error_of('[project]\nname = "x"\npython = 3.11.2\n')
    assert error.path == "/project/mlenv.toml" and error.line == 3
    assert str(error).startswith("/project/mlenv.toml:3:")
    assert error.exit_code == 3


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("text", "at", "message", "hint"),
    [
        (GOOD.replace("[targets.cpu]\n", "[targets.cpu]\nplatfrom = 'x'\n"), "platfrom", "unknown key 'platfrom'",
         "did you mean 'platform'?"),
        (GOOD.replace('gpu = "a10g"', 'gpu = "a10x"'), "a10x", "unknown GPU model 'a10x'", "did you mean 'a10'?"),
        (GOOD.replace('platform = "macos/arm64"', 'platform = "macos/arm64"\ncuda = "12.6"'), '"12.6"',
         "CUDA is not available on macos/arm64", "linux"),
        (GOOD.replace('cuda = "12.4"', 'cuda = "12.3"'), '"12.3"', "unknown CUDA version '12.3'", "12.4"),
        (GOOD.replace('sources = { torch = "pytorch-cu124" }', 'sources = { torch = "pytorch-cu12" }'),
         "pytorch-cu12\"", "unknown index 'pytorch-cu12'", "did you mean 'pytorch-cu124'?"),
        (GOOD.replace('cuda = "12.4"', 'cuda = "12.1"'), "sources = {", "serves CUDA builds cu124", "cu121"),
        (GOOD.replace('gpu-count = 2', 'gpu-count = "two"'), "gpu-count", "expected a positive integer", None),
        (GOOD.replace('idle = "30m"', 'idle = "soon"'), "idle", "duration", None),
        (GOOD.replace('python = "3.11"', 'python = ">=3.10"'), "python =", "one version", "exactly one Python"),
        (GOOD.replace('"numpy>=1.26"', '"numpy>=>1.26"'), "dependencies =", "invalid requirement", None),
        (GOOD.replace("[sweep]\njobs = 2", "[sweeps]\njobs = 2"), "[sweeps]", "unknown key 'sweeps'",
         "did you mean 'sweep'?"),
    ],
)
def test_bad_specs_name_the_line_and_the_fix(text, at, message, hint):
    error = error_of(text)
    assert error.line == line_of(text, at), str(error)
    assert message in error.message
    if hint:
        assert hint in (error.hint or "")


@pytest.mark.parametrize(
    ("section_line", "message"),
    [
        ('[image]\nuser = "app; touch x"', "invalid user name 'app; touch x'"),
        ('[image]\nuser = "root"', "must not be root"),
        ('[image]\nsystem-packages = ["git", "curl\\nRUN touch /x"]', "control characters"),
        ('[image]\nsystem-packages = ["git curl"]', "invalid Debian package name 'git curl'"),
        ('[image]\nbase = "python:3.11\\nRUN touch /x"', "control characters"),
        ('[image]\nbase = "Python:3.11"', "invalid image reference 'Python:3.11'"),
        ('[sweep]\noutput = "out\\n!.env\\n!*.pem"', "control characters"),
        ('[sweep]\noutput = "/etc"', "must be relative to the project folder"),
        ('[sweep]\noutput = "../elsewhere"', "must stay inside the project folder"),
        ('[sweep]\ncluster = "tcp://host:8786 --x"', "invalid URL"),
        ('[devbox]\nmax-lifetime = "2 hours"', "duration"),
        ('[devbox]\nhost = "-oProxyCommand=x"', "invalid host name"),
        ('[devbox]\nport = 0', "positive integer"),
        ('[ci]\ntargets = ["cpu/../x"]', "invalid name"),
    ],
)
def test_section_values_are_validated_by_what_they_are(section_line, message):
    header, key_line = section_line.split("\n", 1)
    text = GOOD.replace(f"{header}\n", f"{header}\n{key_line}\n", 1)
    error = error_of(text)
    assert message in error.message
    assert error.line == line_of(text, key_line.split(" =")[0] + " ="), str(error)


def test_sections_are_typed_settings():
    text = GOOD.replace("[image]\n", '[image]\nuser = "dev"\nsystem-packages = ["git", "libgl1"]\n')
    text = text.replace('idle = "30m"', 'idle = "30m"\nmax-lifetime = "2h"\nspot = true')
    text = text.replace("[sweep]\n", '[sweep]\noutput = "s3://bucket/runs"\nparameters = { lr = [0.1, 0.01] }\n')
    spec = parse(text)
    assert spec.image.user == "dev" and spec.image.system_packages == ("git", "libgl1") and spec.image.base is None
    assert (spec.devbox.idle, spec.devbox.max_lifetime, spec.devbox.spot, spec.devbox.port) == (1800, 7200, True, None)
    assert spec.sweep.output == "s3://bucket/runs" and spec.sweep.parameters == {"lr": [0.1, 0.01]}
    assert spec.sweep.written() == {"jobs": 2, "output": "s3://bucket/runs", "parameters": {"lr": [0.1, 0.01]}}
    assert spec.ci.targets == () and spec.ci.push is True and spec.ci.registry == "ghcr"


def test_cuda_version_must_support_the_gpu():
    text = GOOD.replace('cuda = "12.4"', 'cuda = "13.0"').replace('gpu = "a10g"', 'gpu = "v100"')
    text = text.replace('sources = { torch = "pytorch-cu124" }', "")
    error = error_of(text)
    assert "does not support v100" in error.message


def test_missing_spec_says_to_run_init(tmp_path):
    with pytest.raises(SpecError, match="does not exist") as caught:
        load_spec(tmp_path)
    assert "mlenv init" in caught.value.hint


def test_cli_prints_one_line_error_without_traceback(tmp_path):
    text = GOOD.replace('gpu = "a10g"', 'gpu = "a10x"')
    (tmp_path / "mlenv.toml").write_text(text)
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 3
    assert f"mlenv.toml:{line_of(text, 'a10x')}:1: unknown GPU model 'a10x'" in result.stderr
    assert "did you mean 'a10'" in result.stderr
    assert "Traceback" not in result.stderr
    debug = run_mlenv("--debug", "lock", cwd=tmp_path)
    assert debug.returncode == 3 and "Traceback" in debug.stderr


# Arbitrary text and arbitrary TOML documents: always a SpecError (or a Spec), never a crash.
toml_scalars = st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.floats(allow_nan=False))
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["name", "python", "platform", "cuda", "gpu", "url", "dependencies", "sources", "x",
                         "gpu-count"]),
        inner, max_size=3)),
    max_leaves=8,
)
toml_documents = st.dictionaries(
    st.sampled_from(["project", "targets", "index", "sources", "dependency-groups", "image", "sweep", "devbox",
                     "other"]),
    toml_values,
    max_size=5,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(document=toml_documents)
def test_arbitrary_toml_never_crashes(document):
    import tomli_w

    try:
        text = tomli_w.dumps(document)
    except (TypeError, ValueError):
        return
    try:
        parse(text)
    except MlenvError:
        pass


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_crashes(text):
    try:
        parse(text)
    except MlenvError:
        pass


# --- the fast path of parse_requirement -----------------------------------------------------------

def _as_packaging_reads_it(text: str):
    """What packaging's own parser makes of ``text``: its fields, or the error it raises."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return "invalid"
    return requirement


def _same_requirement(fast, slow) -> None:
    assert fast == slow and str(fast) == str(slow) and hash(fast) == hash(slow)
    assert vars(fast).keys() == vars(slow).keys()  # a field packaging adds later must not be missing
    for key, value in vars(slow).items():
        assert getattr(fast, key) == value, key
    assert [str(s) for s in fast.specifier] == [str(s) for s in slow.specifier]
    for version in ("0.9", "1.0", "1.0.1", "1.0rc1", "1.0+cu124", "2.0", "2.0.post1", "10"):
        assert fast.specifier.contains(version) == slow.specifier.contains(version), version


def _plain_corpus() -> list[str]:
    """Lines shaped like the fast path's, valid and not: every operator with every version form, the
    distributions installed here as `pip freeze` writes them, and near misses packaging refuses."""
    from importlib.metadata import distributions

    operators = ["==", "!=", ">=", "<=", ">", "<", "~=", "===", "=", "=>", "=<", ""]
    versions = ["1", "1.0", "1.2.3", "01.0", "1.0a1", "1.0b2", "1.0rc1", "1.0.post1", "1.0.dev3", "1.0rc1.post2.dev3",
                "1.0.*", "1.*", "1.0+cu124", "1.0+local.7", "1.0+abc.*", "1.0.*.*", "", "a", "1.0.", ".1", "1..0",
                "1.0-1", "1.0_1", "1.0RC1", "1.0c1"]
    names = ["numpy", "scikit-learn", "zope.interface", "typing_extensions", "A", "a-", "-a", "a..b", "Django",
             "ruamel.yaml.clib", "1password", "a_b-c.d"]
    corpus = [f"{name}{op}{version}" for name in names for op in operators for version in versions]
    corpus += [f"numpy{first},{second}" for first in (">=1.0", "<2", "==1.*", "!=1.5", ">=1.0+cu1")
               for second in ("<2.0", "!=1.5.*", "", ">=", ",<3", "~=1.4")]
    corpus += [f"{dist.metadata['Name']}=={dist.version}" for dist in distributions()]
    return corpus


def test_fast_requirement_parse_equals_packaging_on_a_corpus():
    """mlenv/spec.py parses plain lines without packaging's PEP 508 parser: for every line it must
    accept exactly what packaging accepts and build an equal object."""
    from packaging.requirements import InvalidRequirement

    from mlenv.spec import _PLAIN_REQUIREMENT, parse_requirement

    corpus = _plain_corpus()
    fast_path = [text for text in corpus if _PLAIN_REQUIREMENT.fullmatch(text)]
    assert len(fast_path) > 1000  # the corpus exercises the fast path, not only the fallback
    accepted = 0
    for text in corpus:
        slow = _as_packaging_reads_it(text)
        parse_requirement.cache_clear()
        if slow == "invalid":
            with pytest.raises(InvalidRequirement):
                parse_requirement(text)
            continue
        _same_requirement(parse_requirement(text), slow)
        accepted += 1
    assert accepted > 1000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="abcAB01239.-_*+=!<>~,", min_size=1, max_size=14))
def test_fast_requirement_parse_equals_packaging_on_random_lines(text):
    from packaging.requirements import InvalidRequirement

    from mlenv.spec import parse_requirement

    slow = _as_packaging_reads_it(text)
    parse_requirement.cache_clear()
    if slow == "invalid":
        with pytest.raises(InvalidRequirement):
            parse_requirement(text)
    else:
        _same_requirement(parse_requirement(text), slow)
