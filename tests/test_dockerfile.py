"""Offline checks of the Dockerfile and .dockerignore: Docker need not be installed.

The Dockerfile is parsed into its instructions, the build context is worked out from
.dockerignore with Docker's matching rules, and the COPY instructions are replayed onto an empty
file tree, so the files that `pip install .` sees inside the image are known; a wheel is then built
from exactly those files. What no offline test shows: that the base image pulls, that every pinned
wheel exists for it, and that the image runs (build it: `docker build -t mtrank:0.1.0 .`).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "requirements.lock"
UID = 1000  # the manifests' runAsUser / fsGroup


# --- the Dockerfile's instructions ----------------------------------------------------------------


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comment lines dropped (also inside a continued instruction),
    lines ending in a backslash joined, as Docker's parser does with the default escape character."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            keyword, _, rest = whole.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def _all(keyword: str) -> list[str]:
    return [rest for key, rest in INSTRUCTIONS if key == keyword]


def _exec_form(rest: str) -> list[str] | None:
    """The JSON (exec) form's list, or None for the shell form."""
    if rest.startswith("["):
        value = json.loads(rest)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value
    return None


def _copy_parts(rest: str) -> tuple[dict, list[str], str]:
    """({--flag: value}, sources, destination) of a COPY or ADD."""
    words = shlex.split(rest) if not rest.startswith("[") else None
    if words is None:
        words = _exec_form(rest)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    assert len(words) >= 2, f"COPY {rest}: needs sources and a destination"
    return flags, words[:-1], words[-1]


def _labels() -> dict[str, str]:
    labels = {}
    for rest in _all("LABEL"):
        for word in shlex.split(rest):
            key, sep, value = word.partition("=")
            assert sep, f"LABEL {word}: use key=value"
            labels[key] = value
    return labels


def _shell_commands(rest: str) -> list[list[str]]:
    """A shell-form RUN as its simple commands (split at &&, ||, ; and |), each as words."""
    assert _exec_form(rest) is None, "RUN in the shell form expected"
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def _pip_installs() -> list[list[str]]:
    """The arguments after `pip install` of every pip install in a RUN."""
    found = []
    for rest in _all("RUN"):
        for words in _shell_commands(rest):
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                found.append(words[words.index("install") + 1 :])
            else:
                assert "pip" not in words[0], f"{' '.join(words)}: only `pip install` is expected"
    return found


# --- .dockerignore, with Docker's rules --------------------------------------------------------------


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """(exclusion?, regex) per line: comments and blank lines skipped, a leading ! re-includes, each
    pattern cleaned like a path (leading and trailing slashes dropped); `**` spans any number of
    folders, `*` and `?` stay within one, as in Docker's pattern matcher."""
    patterns = []
    for line in text.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        exclude = not pattern.startswith("!")
        pattern = pattern.lstrip("!").strip()
        pattern = str(pathlib.PurePosixPath(pattern)).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i + 1)
                body = pattern[i + 1 : end]
                regex, i = regex + "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]", end + 1
            elif pattern[i] == "\\" and i + 1 < len(pattern):
                regex, i = regex + re.escape(pattern[i + 1]), i + 2
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((exclude, re.compile(regex)))
    return patterns


IGNORE = dockerignore_patterns(DOCKERIGNORE.read_text())


def ignored(path: str, patterns=IGNORE) -> bool:
    """Whether a context path (relative, with /) is left out: the last pattern matching it or one of
    its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for exclude, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            result = exclude
    return result


@functools.cache
def context_files() -> frozenset[str]:
    """The files `docker build .` sends: the repository's files less what .dockerignore leaves out.
    An ignored folder is not entered unless a `!` pattern could bring something in it back."""
    can_reinclude = any(not exclude for exclude, _ in IGNORE)
    found = set()
    for folder, dirs, files in os.walk(REPO):
        relative = pathlib.Path(folder).relative_to(REPO).as_posix()
        prefix = "" if relative == "." else relative + "/"
        if not can_reinclude:
            dirs[:] = [d for d in dirs if not ignored(prefix + d)]
        found |= {prefix + f for f in files if not ignored(prefix + f)}
    return frozenset(found)


# --- the image's files, by replaying COPY ------------------------------------------------------------


def image_files() -> dict[str, dict]:
    """{absolute path in the image: state} for the files the COPY instructions put there, with the
    WORKDIR of each RUN: {"runs": [(workdir, RUN arguments, files present then)]}."""
    context = context_files()
    workdir = "/"
    present: dict[str, str] = {}
    runs = []
    for key, rest in INSTRUCTIONS:
        if key == "WORKDIR":
            workdir = str(pathlib.PurePosixPath(workdir, rest))
        elif key in ("COPY", "ADD"):
            assert key == "COPY", "ADD fetches and unpacks; COPY is what is meant"
            flags, sources, dest = _copy_parts(rest)
            assert "from" not in flags, "one stage: every COPY is from the build context"
            target = pathlib.PurePosixPath(workdir, dest)
            for source in sources:
                source = source.rstrip("/") or "."
                assert not any(ch in source for ch in "*?["), f"COPY {source}: name files, not patterns"
                if (REPO / source).is_dir():
                    inside = [f for f in context if f.startswith(source + "/")]
                    for f in inside:
                        present[str(target / pathlib.PurePosixPath(f).relative_to(source))] = f
                else:
                    name = target / pathlib.PurePosixPath(source).name if dest.endswith("/") else target
                    if source in context:
                        present[str(name)] = source
        elif key == "RUN":
            runs.append((workdir, rest, dict(present)))
    return {"files": present, "runs": runs, "workdir": workdir}


def _project_install() -> tuple[str, dict]:
    """(WORKDIR, files present) of the RUN that installs the project itself."""
    found = [
        (workdir, files)
        for workdir, rest, files in image_files()["runs"]
        if any(words[:2] == ["pip", "install"] and "." in words for words in _shell_commands(rest))
    ]
    assert len(found) == 1, "one RUN installs the project"
    return found[0]


def _packages() -> list[str]:
    """The packages of pyproject.toml's [tool.setuptools.packages.find], found as setuptools finds them."""
    from setuptools.discovery import FlatLayoutPackageFinder, PEP420PackageFinder

    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    finder = PEP420PackageFinder if find.get("namespaces", True) else FlatLayoutPackageFinder
    found = finder.find(
        str(REPO / find.get("where", ["."])[0]), include=find.get("include", ("*",)), exclude=find.get("exclude", ())
    )
    return [p for p in found if "__pycache__" not in p.split(".")]


# --- tests -------------------------------------------------------------------------------------------


def test_parser_reads_continuations_and_comments():
    text = "FROM a\n# c\nRUN x \\\n  # inside\n  && y\nUSER 1\n"
    assert parse_dockerfile(text) == [("FROM", "a"), ("RUN", "x && y"), ("USER", "1")]


def test_one_stage_from_the_python_base():
    (base,) = _all("FROM")
    assert base == "python:3.11-slim-bookworm"


def test_base_python_is_the_projects():
    """The base image's Python minor version is the one requires-python allows, and the one that
    resolved and installed requirements.lock here (this test's interpreter)."""
    (base,) = _all("FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim-\w+", base)
    assert match, base
    minor = f"{match.group(1)}.{match.group(2)}"
    allowed = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(f"{minor}.0") in allowed and Version(f"{minor}.99") in allowed
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == minor


def test_installs_exactly_the_lock_then_the_project():
    installs = _pip_installs()
    assert installs == [["--no-cache-dir", "-r", "requirements.lock"], ["--no-cache-dir", "--no-deps", "."]]
    # The lock's path resolves, in the RUN's WORKDIR, to the repository's requirements.lock.
    ((workdir, files),) = [(w, f) for w, rest, f in image_files()["runs"] if "requirements.lock" in rest]
    assert files.get(str(pathlib.PurePosixPath(workdir, "requirements.lock"))) == "requirements.lock"


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"requirements.lock: {line!r} is not an exact name==version pin"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = match.group(2)
    return pins


def test_lock_holds_every_dependency_of_the_project():
    """`pip install --no-deps .` installs no dependency: each one of pyproject.toml's must be in the
    lock, at a version its range allows."""
    pins = _lock()
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is not {requirement}"
        )


def test_lock_tensorflow_is_the_tf_serving_version():
    """The image's TensorFlow exports the SavedModels that the TF Serving image in k8s/ loads: the same
    minor version (TF Serving may not load what a newer TensorFlow wrote)."""
    deployment = yaml.safe_load((REPO / "k8s" / "tfserving" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    image, _, tag = container["image"].partition(":")
    assert image == "tensorflow/serving"
    tensorflow = Version(_lock()["tensorflow"])
    serving = Version(tag)
    assert (tensorflow.major, tensorflow.minor) == (serving.major, serving.minor)
    assert tensorflow.release == serving.release, "the same release, as now (2.21.0)"


def test_copy_sources_exist_and_are_in_the_context():
    context = context_files()
    for rest in _all("COPY"):
        _, sources, _ = _copy_parts(rest)
        for source in sources:
            path = source.rstrip("/")
            assert (REPO / path).exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(path), f"COPY {source}: .dockerignore leaves it out of the build context"
            if (REPO / path).is_dir():
                assert any(f.startswith(path + "/") for f in context), f"COPY {source}: nothing of it is sent"


def test_dockerignore_leaves_out_what_it_should():
    for path in (
        ".venv/bin/python",
        "runs/default/run.json",
        "bench/.data/x.csv",
        ".git/HEAD",
        "mtrank/__pycache__/cli.cpython-311.pyc",
        "mtrank.egg-info/PKG-INFO",
        ".pytest_cache/v/x",
    ):
        assert ignored(path), path
    for path in ("mtrank/cli.py", "trainer/models/mmoe.py", "requirements.lock", "pyproject.toml", "bench/run.py"):
        assert not ignored(path), path


def test_dockerignore_matcher():
    """The matcher follows Docker's rules on the cases that matter here."""
    patterns = dockerignore_patterns("runs/\n/build\n**/__pycache__\n*.md\n!README.md\ndocs/**/*.png\n")
    cases = {
        "runs/a/b.json": True,
        "x/runs/a": False,
        "build/lib/x.py": True,
        "__pycache__/a.pyc": True,
        "a/b/__pycache__/c.pyc": True,
        "NOTES.md": True,
        "README.md": False,
        "k8s/README.md": False,
        "docs/a.png": True,
        "docs/x/y/a.png": True,
        "docs/a.jpg": False,
    }
    assert {path: ignored(path, patterns) for path in cases} == cases


def test_project_files_reach_the_image():
    """Every module of every package that pyproject.toml's discovery includes, and pyproject.toml,
    are in the folder `pip install .` runs in, at the same relative paths."""
    workdir, files = _project_install()
    here = {
        str(pathlib.PurePosixPath(f).relative_to(workdir)): source
        for f, source in files.items()
        if pathlib.PurePosixPath(f).is_relative_to(workdir)
    }
    assert here.get("pyproject.toml") == "pyproject.toml"
    packages = _packages()
    # Every top-level package of the repository, so a new one cannot be left out of the image.
    top = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert (
        {p.split(".")[0] for p in packages}
        == top
        == {"mtrank", "common", "example_gen", "synth", "pipeline", "transform", "trainer", "serving", "experiments"}
    )
    for package in packages:
        folder = package.replace(".", "/")
        modules = [p.relative_to(REPO).as_posix() for p in (REPO / folder).glob("*.py")]
        for module in modules:
            assert here.get(module) == module, f"{module} (package {package}) is not copied"
    assert not [f for f in here if f.startswith(("runs/", ".venv/")) or "__pycache__" in f]
    for key in ("readme", "license"):
        value = PYPROJECT["project"].get(key)
        if isinstance(value, str):
            assert value in here, f"pyproject.toml's {key} {value} is not copied"


def test_wheel_builds_from_the_copied_files(tmp_path):
    """`pip install .` on exactly the files the image holds at that point: the wheel has every module
    and the `mtrank` entry point."""
    pytest.importorskip("setuptools")
    workdir, files = _project_install()
    source = tmp_path / "app"
    for target, origin in files.items():
        if pathlib.PurePosixPath(target).is_relative_to(workdir):
            dest = source / pathlib.PurePosixPath(target).relative_to(workdir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes((REPO / origin).read_bytes())
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("mtrank-*.whl")
    assert wheel.name.startswith(f"mtrank-{PYPROJECT['project']['version']}-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    copied = {p.relative_to(source).as_posix() for p in source.rglob("*.py")}
    for package in _packages():
        folder = package.replace(".", "/")
        modules = [m for m in copied if m.rpartition("/")[0] == folder]
        assert modules, f"package {package} was not copied"
        for module in modules:
            assert module in names, f"{module} is not in the wheel"
    assert re.search(r"^mtrank\s*=\s*mtrank\.cli:main$", scripts, flags=re.M)


def test_runs_as_the_manifests_non_root_user():
    users = _all("USER")
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    assert user == str(UID) and group in ("", str(UID)), "numeric uid 1000, which runAsNonRoot can verify"
    # The uid exists in the image (a home for Keras' and TensorFlow's caches).
    created = [words for rest in _all("RUN") for words in _shell_commands(rest) if words[0] == "useradd"]
    assert len(created) == 1 and "--uid" in created[0] and created[0][created[0].index("--uid") + 1] == str(UID)
    # ... and the Kubernetes manifests run the image as that uid.
    for path in sorted((REPO / "k8s").rglob("*.yaml")):
        text = path.read_text()
        for value in re.findall(r"^\s*(?:runAsUser|fsGroup):\s*(\S+)", text, flags=re.M):
            assert value == str(UID), f"{path.relative_to(REPO)}: {value}"


def test_entrypoint_and_workdir():
    (entrypoint,) = _all("ENTRYPOINT")
    assert _exec_form(entrypoint) == ["mtrank"], "exec form, so signals reach mtrank and args append"
    assert "mtrank" in PYPROJECT["project"]["scripts"]
    assert image_files()["workdir"] == "/app"


def test_image_version_is_the_manifests_tag():
    """The image's version label is pyproject's version, which tags the image in every manifest and
    in the Kubeflow Pipelines components' default image."""
    version = PYPROJECT["project"]["version"]
    assert _labels()["org.opencontainers.image.version"] == version
    images = set()
    for path in (REPO / "k8s").rglob("*.yaml"):
        images |= set(re.findall(r"^\s*image:\s*(mtrank\S*)", path.read_text(), flags=re.M))
    assert images == {f"mtrank:{version}"}
    named_in_code = set()
    for path in (REPO / "pipeline").rglob("*.py"):
        named_in_code |= set(re.findall(r"[\"'](mtrank:[^\"'\s]+)[\"']", path.read_text()))
    assert named_in_code <= {f"mtrank:{version}"}
