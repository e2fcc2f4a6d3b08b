"""Checks that BUILD keeps up with the sources: every module, app and test file has its target, and
every target's deps match what its files import. No Bazel needed: BUILD is evaluated as Python with
stand-ins for the Bazel functions it calls, and imports are read with `ast`.

The file system is the oracle (clr_loop/**/*.py, benchmarks/**/*.py and tests/*.py are scanned,
never listed here),
so a new module or test without a BUILD entry fails, and the message holds the stanza to add.
In tests/, a `*_test.py` file is a test (a pytest_test, and no library: test files never import each
other); any other module is test support (conftest.py, which pytest loads, and testing.py, the
helpers test files import as the top-level module `testing`), a testonly py_library each.
"""

import ast
import dataclasses
import functools
import os
import re
import sys
from pathlib import Path

import pytest

# Not resolved: under `bazel test` the runfiles tree (only the files BUILD declares) is the repo.
ROOT = Path(os.path.abspath(__file__)).parent.parent
BUILD_FILE = ROOT / "BUILD"
PACKAGE = "clr_loop"
# The folders whose modules need a py_library each: the package, and the benchmarks beside it.
SOURCE_DIRS = (PACKAGE, "benchmarks")
TEST_GLOB = "tests/*_test.py"
TESTS_DIR = "tests"
# What tools/pytest.bzl adds to every pytest_test: the runner (its main), pytest, pytest's config.
PYTEST_RUNNER = "//tools:pytest_main.py"
PYTEST_CONFIG = "//:pyproject.toml"

# Import name -> pip distribution, where they differ; otherwise the import name is the distribution.
IMPORT_TO_DIST = {
    "absl": "absl-py",
    "google.protobuf": "protobuf",
    "PIL": "pillow",
    "yaml": "pyyaml",
}

# Test file -> the Markdown files whose ```python blocks it runs: their imports are the test's too.
# readme_test runs the README's fit example and docs/schedules.md's two schedule examples; docs_test runs
# every other block of README.md and docs/*.md.
DOCS = ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
RUNS_MARKDOWN = {"tests/readme_test.py": ["README.md", "docs/schedules.md"], "tests/docs_test.py": DOCS}

LIBRARY, BINARY, TEST = "py_library", "py_binary", "py_test"


def normalize_dist(name):
    """Returns a distribution name as rules_python's hub spells its packages (PEP 503, with `_`)."""
    return re.sub(r"[-_.]+", "_", name).lower()


@dataclasses.dataclass
class Target:
    """One rule call in BUILD: its kind (LIBRARY, BINARY or TEST), attributes and BUILD line."""

    kind: str
    name: str
    srcs: list
    deps: list
    data: list
    main: str
    lineno: int
    testonly: bool = False
    imports: list = dataclasses.field(default_factory=list)


class Build:
    """The targets of BUILD, found by running it as Python with stand-ins for load(), the rules,
    glob() and requirement() (requirement("absl-py") gives "@pypi//absl_py", as rules_python's)."""

    def __init__(self, build_file):
        self.root = build_file.parent
        self.targets = {}
        self.errors = []
        self._build_file = str(build_file)
        self._loadable = {
            "@rules_python//python:defs.bzl": {
                "py_library": self._rule(LIBRARY),
                "py_binary": self._rule(BINARY),
                "py_test": self._rule(TEST),
            },
            "@pypi//:requirements.bzl": {"requirement": lambda name: "@pypi//" + normalize_dist(name)},
            "//tools:pytest.bzl": {"pytest_test": self._pytest_test},
        }
        self._namespace = {
            "load": self._load,
            "glob": self._glob,
            "package": lambda **kwargs: None,
            "exports_files": lambda srcs, **kwargs: None,
        }
        exec(compile(build_file.read_text(), self._build_file, "exec"), self._namespace)

    def _load(self, bzl, *symbols, **aliases):
        known = self._loadable.get(bzl)
        if known is None:
            raise AssertionError(f"BUILD loads {bzl}, which tests/build_test.py does not model: add it to Build")
        for local, symbol in [(s, s) for s in symbols] + list(aliases.items()):
            if symbol not in known:
                raise AssertionError(
                    f"BUILD loads {symbol} from {bzl}; tests/build_test.py models only {sorted(known)}"
                )
            self._namespace[local] = known[symbol]

    def _glob(self, include, exclude=(), allow_empty=False, **kwargs):
        matches = {p for pattern in include for p in self.root.glob(pattern) if p.is_file()}
        matches -= {p for pattern in exclude for p in self.root.glob(pattern)}
        if not matches and not allow_empty:
            self.errors.append(f"glob({list(include)}) matches no file (an error from Bazel 8 on)")
        return sorted(p.relative_to(self.root).as_posix() for p in matches)

    def _rule(self, kind):
        def rule(name, srcs=(), deps=(), data=(), main=None, testonly=False, imports=(), **kwargs):
            if name in self.targets:
                self.errors.append(f"BUILD defines //:{name} twice")
            frame = sys._getframe(1)
            while frame and frame.f_code.co_filename != self._build_file:
                frame = frame.f_back
            self.targets[name] = Target(
                kind,
                name,
                list(srcs),
                list(deps),
                list(data),
                main,
                frame.f_lineno if frame else 0,
                bool(testonly),
                list(imports),
            )

        return rule

    def _pytest_test(self, name, srcs, deps=(), data=(), **kwargs):
        if len(srcs) != 1:
            self.errors.append(f"pytest_test //:{name} must have exactly one src, has {srcs}")
        self._rule(TEST)(
            name,
            srcs=list(srcs) + [PYTEST_RUNNER],
            deps=list(deps) + ["@pypi//pytest"],
            data=list(data) + [PYTEST_CONFIG],
            main=PYTEST_RUNNER,
            **kwargs,
        )

    def local_path(self, label):
        """Returns the repo-relative path of the file a label names, or None if it names a target."""
        if label.startswith("@"):
            return None
        if label.startswith("//"):
            package, _, name = label[2:].partition(":")
            if package:
                return f"{package}/{name}"
            label = name
        name = label.removeprefix(":")
        return None if name in self.targets else name

    def target_of(self, label):
        """Returns the Target a label names in this BUILD, or None (a file, another package or repo)."""
        if label.startswith(("@", "//")) and not label.startswith("//:"):
            return None
        return self.targets.get(label.removeprefix("//:").removeprefix(":"))

    def files(self, target):
        """Returns the repo-relative paths of a target's srcs."""
        return {self.local_path(label) for label in target.srcs} - {None}

    def sources(self, target):
        """Returns the files whose imports the target needs, sorted: the .py files of its srcs and
        the Markdown files they run (RUNS_MARKDOWN)."""
        paths = {p for p in self.files(target) if p.endswith(".py")}
        paths |= {md for p in paths for md in RUNS_MARKDOWN.get(p, [])}
        return sorted(p for p in paths if (self.root / p).is_file())

    def owners(self, path, kinds=(LIBRARY,)):
        """Returns the names of the targets of `kinds` whose srcs hold `path`, sorted."""
        return sorted(t.name for t in self.targets.values() if t.kind in kinds and path in self.files(t))

    def wrapped(self, target):
        """Returns the targets among `target`'s deps that share one of its srcs (the library of a
        py_binary's main module): their deps reach `target` as if it had declared them itself."""
        deps = [self.target_of(label) for label in target.deps]
        return [d for d in deps if d and self.files(target) & self.files(d)]

    def sorted_targets(self):
        return sorted(self.targets.values(), key=lambda t: t.name)


def module_files():
    """Returns the repo-relative paths of the modules in SOURCE_DIRS (the package, the benchmarks), sorted."""
    return sorted(p.relative_to(ROOT).as_posix() for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def in_sources(path):
    """Returns whether a repo-relative path lies in one of SOURCE_DIRS."""
    return path.startswith(tuple(d + "/" for d in SOURCE_DIRS))


def pytest_files():
    """Returns the repo-relative paths of the test files, sorted."""
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(TEST_GLOB))


def support_files():
    """Returns the repo-relative paths of the test-support modules (tests/*.py but the test files), sorted."""
    tests = set(pytest_files())
    return sorted(
        p for p in (q.relative_to(ROOT).as_posix() for q in (ROOT / TESTS_DIR).glob("*.py")) if p not in tests
    )


def import_name(path):
    """Returns the name code imports a repo-relative .py path by: a module in tests/ is top-level (pytest
    puts tests/ on sys.path; Bazel's `imports = ["tests"]`), any other its dotted module_name."""
    return Path(path).stem if Path(path).parent.as_posix() == TESTS_DIR else module_name(path)


def module_name(path):
    """Returns the dotted module name of a repo-relative .py path ("clr_loop/__init__.py" -> "clr_loop")."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_code(path):
    """Returns the Python code of a file: a .py file's text, or a Markdown file's ```python blocks."""
    text = (ROOT / path).read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S)) if path.endswith(".md") else text


@functools.lru_cache(maxsize=None)
def parse(path):
    """Returns the AST of python_code(path), or None if it does not parse (see test_sources_parse)."""
    try:
        return ast.parse(python_code(path), path)
    except SyntaxError:
        return None


def is_app(path):
    """Returns whether a module runs as a program: it has an `if __name__ == "__main__":` block."""
    for node in getattr(parse(path), "body", []):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            strings = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if names == ["__name__"] and strings == ["__main__"]:
                return True
    return False


def first_party_file(name, importer):
    """Returns the repo file that module `name` is, or None if it is not first-party. pytest puts a
    test's directory on sys.path, so a test may also import its siblings."""
    if not name:
        return None
    roots = [ROOT] + ([ROOT / Path(importer).parent] if importer.startswith("tests/") else [])
    for root in roots:
        stem = root / name.replace(".", "/")
        for candidate in (stem.with_name(stem.name + ".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate.relative_to(ROOT).as_posix()
    return None


def _catches_import_error(handler):
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError", "Exception") for t in types)


def optional_imports(tree):
    """Returns the import nodes that a `try: ... except ImportError:` guards (in the try or in the
    handler, as a fallback): the module works without them, so they need no dep."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for part in node.body + node.handlers:
                optional.update(id(n) for n in ast.walk(part) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return optional


def imported_modules(path):
    """Returns the dotted names of the modules a file needs (imports anywhere in it but the optional
    ones), sorted: `import a.b` gives a.b; `from a import b` gives a.b if that is a first-party module,
    else a (b is an attribute)."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    tree = parse(path) or ast.Module(body=[], type_ignores=[])
    optional = optional_imports(tree)
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if alias.name != "*" and first_party_file(submodule, path) else base)
    return sorted(names)


@functools.lru_cache(maxsize=None)
def requirements(path, pytest_loads_conftest=False):
    """Returns what a file imports: (first-party files, normalized pip distributions), each sorted.
    A file that pytest runs also needs the conftest.py beside it, which pytest imports first."""
    files, dists = set(), set()
    for name in imported_modules(path):
        resolved = first_party_file(name, path)
        top = name.split(".")[0]
        if resolved:
            files.add(resolved)
        elif top not in sys.stdlib_module_names and not first_party_file(top, path):
            dist = next(
                (d for prefix, d in IMPORT_TO_DIST.items() if name == prefix or name.startswith(prefix + ".")), top
            )
            dists.add(normalize_dist(dist))
    conftest = (Path(path).parent / "conftest.py").as_posix()
    if pytest_loads_conftest and path.endswith(".py") and (ROOT / conftest).is_file():
        files.add(conftest)
    return tuple(sorted(files - {path})), tuple(sorted(dists))


def lock_file():
    """Returns the repo-relative path of the lock file that MODULE.bazel's pip.parse reads."""
    match = re.search(r'requirements_lock\s*=\s*"//:([^"]+)"', (ROOT / "MODULE.bazel").read_text())
    assert match, 'MODULE.bazel: pip.parse has no requirements_lock = "//:<file>"'
    return match.group(1)


def locked_dists():
    """Returns the normalized names of the distributions pinned (`name==version`) in the lock file."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==", (ROOT / lock_file()).read_text(), re.M)
    return {normalize_dist(name) for name in pins}


def suggested_name(path):
    """Returns the BUILD name for a file's py_library: the module's name, or `<name>_lib` for an app
    or a test file (whose own name goes to its py_binary or test target)."""
    base = Path(path).parent.name if Path(path).name == "__init__.py" else Path(path).stem
    app = in_sources(path) and is_app(path)
    return base + "_lib" if app or Path(path).match(TEST_GLOB) else base


def stanza(kind, name, path, build):
    """Returns the BUILD rule call to add for `path`, with deps computed from its imports."""
    files, dists = requirements(path, pytest_loads_conftest=kind == "pytest_test")
    deps = [f'":{(build.owners(f) or [suggested_name(f)])[0]}"' for f in files]
    deps += [f'requirement("{d.replace("_", "-")}")' for d in dists if not (kind == "pytest_test" and d == "pytest")]
    lines = [f"{kind}(", f'    name = "{name}",', f'    srcs = ["{path}"],']
    if deps:
        lines += ["    deps = ["] + [f"        {d}," for d in sorted(deps)] + ["    ],"]
    lines.append(")")
    missing = [f for f in files if not build.owners(f)]
    if missing:
        lines.append(f"(and a py_library for {', '.join(missing)}; testonly = True for a module in tests/)")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def build():
    return Build(BUILD_FILE)


def test_sources_parse(build):
    paths = set(module_files()) | set(pytest_files()) | {p for t in build.targets.values() for p in build.sources(t)}
    problems = []
    for path in sorted(paths):
        try:
            ast.parse(python_code(path), path)
        except SyntaxError as e:
            problems.append(f"{path}:{e.lineno}: {e.msg} (so its imports cannot be checked)")
    assert not problems, "\n".join(problems)


def test_build_evaluates_cleanly(build):
    assert not build.errors, "BUILD problems:\n" + "\n".join(build.errors)


def test_no_target_lists_a_dep_twice(build):
    """Bazel refuses a BUILD whose rule names one label twice (pytest_test adds pytest itself)."""
    problems = [
        f"//:{target.name}: {label} is listed more than once in its deps"
        for target in build.targets.values()
        for label in sorted(set(target.deps))
        if target.deps.count(label) > 1
    ]
    assert not problems, "\n".join(problems)


def test_every_module_has_exactly_one_library(build):
    problems = []
    for path in module_files():
        owners = build.owners(path)
        if not owners:
            problems.append(
                f"{path} has no py_library in BUILD; add:\n\n" + stanza("py_library", suggested_name(path), path, build)
            )
        elif len(owners) > 1:
            problems.append(f"{path} is in the srcs of several py_libraries ({', '.join(owners)}); keep one")
    for target in build.sorted_targets():
        if target.kind == LIBRARY and len(target.srcs) > 1 and any(in_sources(p) for p in build.files(target)):
            problems.append(f"//:{target.name} has srcs {target.srcs}: one module per py_library")
    assert not problems, "\n\n".join(problems)


def test_every_app_has_a_binary(build):
    problems = []
    for path in module_files():
        if is_app(path) and not build.owners(path, kinds=(BINARY,)):
            library = (build.owners(path) or [suggested_name(path)])[0]
            problems.append(
                f'{path} has an `if __name__ == "__main__":` block but no py_binary in BUILD; add:\n\n'
                f'py_binary(\n    name = "{Path(path).stem}",\n    srcs = ["{path}"],\n    main = "{path}",\n'
                f'    deps = [":{library}"],\n)'
            )
    for target in build.sorted_targets():
        if target.kind != BINARY:
            continue
        main = build.local_path(target.main) if target.main else None
        if main not in build.files(target):
            problems.append(f"py_binary //:{target.name}: main = {target.main!r} must be one of its srcs")
        elif parse(main) and not is_app(main):
            problems.append(
                f'py_binary //:{target.name}: {main} has no `if __name__ == "__main__":` block, '
                "so running the binary would do nothing"
            )
    assert not problems, "\n\n".join(problems)


def test_every_test_file_has_one_test_target(build):
    problems = []
    for path in pytest_files():
        owners = build.owners(path, kinds=(TEST,))
        if not owners:
            problems.append(
                f"{path} has no test target in BUILD; add:\n\n" + stanza("pytest_test", Path(path).stem, path, build)
            )
        elif len(owners) > 1:
            problems.append(f"{path} is in several test targets ({', '.join(owners)}); keep one")
    assert not problems, "\n\n".join(problems)


def test_every_test_support_module_has_one_testonly_library(build):
    """conftest.py, testing.py: a testonly py_library each; one that a test file imports by name also
    has `imports = ["tests"]`, so that `import testing` finds it under Bazel as under pytest."""
    imported = {f for path in pytest_files() for f in requirements(path)[0]}
    problems = []
    for path in support_files():
        owners = [build.targets[name] for name in build.owners(path)]
        if len(owners) != 1:
            problems.append(
                f"{path} is in the srcs of {len(owners)} py_libraries ({', '.join(t.name for t in owners)}); "
                "it needs exactly one:\n\n"
                + (stanza("py_library", suggested_name(path), path, build) if not owners else "")
            )
            continue
        (target,) = owners
        if not target.testonly:
            problems.append(
                f"//:{target.name} (BUILD line {target.lineno}) holds the test-support module {path}: "
                "add testonly = True"
            )
        if path in imported and TESTS_DIR not in target.imports:
            problems.append(
                f"//:{target.name} (BUILD line {target.lineno}): test files import {import_name(path)} "
                f'as a top-level module; add imports = ["{TESTS_DIR}"]'
            )
    assert not problems, "\n\n".join(problems)


def test_no_library_holds_a_test_file(build):
    """Test files share helpers through tests/testing.py, never by importing each other, so no
    py_library holds a `*_test.py` file (its pytest_test is its only target)."""
    tests = set(pytest_files())
    problems = [
        f"//:{target.name} (BUILD line {target.lineno}) holds the test file(s) "
        f"{', '.join(sorted(build.files(target) & tests))}: move what other tests need to "
        "tests/testing.py (the :testing library) and remove this library"
        for target in build.sorted_targets()
        if target.kind == LIBRARY and build.files(target) & tests
    ]
    assert not problems, "\n".join(problems)


def test_referenced_files_exist(build):
    # Under `bazel test` only the declared files are here: what is missing may just be undeclared.
    hint = " (or, if it exists, add it to the data of //:build_test)" if "TEST_SRCDIR" in os.environ else ""
    problems = []
    for target in build.sorted_targets():
        for label in target.srcs + target.data + ([target.main] if target.main else []):
            path = build.local_path(label)
            if path is not None and not (ROOT / path).exists():
                problems.append(
                    f"//:{target.name} (BUILD line {target.lineno}) refers to {label}, but {path} "
                    f"does not exist: create it or remove it from the target{hint}"
                )
        for label in target.deps:
            if not label.startswith("@") and build.target_of(label) is None:
                problems.append(
                    f"//:{target.name} (BUILD line {target.lineno}) has dep {label}, which is not a target in BUILD"
                )
    assert not problems, "\n".join(problems)


def test_first_party_deps_match_imports(build):
    problems = []
    for target in build.sorted_targets():
        if any(not (ROOT / p).is_file() for p in build.files(target)):
            continue  # test_referenced_files_exist reports it; the imports are unknown
        direct = {t.name: t for t in map(build.target_of, target.deps) if t}
        reachable = dict(direct)
        for library in build.wrapped(target):
            reachable.update({t.name: t for t in map(build.target_of, library.deps) if t})
        used = {library.name for library in build.wrapped(target)}
        for path in build.sources(target):
            for file in requirements(path, pytest_loads_conftest=target.kind == TEST)[0]:
                if file in build.files(target):
                    continue
                providers = [name for name, t in reachable.items() if file in build.files(t)]
                used.update(providers)
                if not providers:
                    owner = (build.owners(file) or [suggested_name(file)])[0]
                    problems.append(
                        f"//:{target.name}: {path} imports {import_name(file)} ({file}); "
                        f'add ":{owner}" to the deps of //:{target.name}'
                        + ("" if build.owners(file) else f" (and a py_library {owner} for {file})")
                    )
        for name in sorted(set(direct) - used):
            problems.append(
                f'//:{target.name}: dep ":{name}" is not imported by '
                f'{", ".join(build.sources(target))}; remove it from the deps of //:{target.name}'
            )
    assert not problems, "\n".join(problems)


def test_third_party_deps_are_declared_and_pinned(build):
    pinned = locked_dists()
    problems = []
    for target in build.sorted_targets():
        labels = target.deps + [label for library in build.wrapped(target) for label in library.deps]
        declared = {label.removeprefix("@pypi//").split(":")[0] for label in labels if label.startswith("@pypi//")}
        for dist in sorted(declared - pinned):
            problems.append(f"//:{target.name}: pip package {dist} is not pinned in {lock_file()}")
        for path in build.sources(target):
            for dist in requirements(path)[1]:
                if dist not in declared:
                    problems.append(
                        f"//:{target.name}: {path} imports the pip package {dist}; add "
                        f'requirement("{dist.replace("_", "-")}") to the deps of //:{target.name}'
                        + ("" if dist in pinned else f" and pin it in {lock_file()}")
                        + " (if the import name is not the package name, map it in IMPORT_TO_DIST in "
                        "tests/build_test.py)"
                    )
        for label in target.deps:
            if label.startswith("@") and not label.startswith("@pypi//"):
                problems.append(f"//:{target.name}: dep {label} is from a repository other than @pypi")
    assert not problems, "\n".join(problems)


def test_module_bazel_feeds_the_pip_hub_that_build_loads():
    module = (ROOT / "MODULE.bazel").read_text()
    assert re.search(r'hub_name\s*=\s*"pypi"', module), 'MODULE.bazel: pip.parse must say hub_name = "pypi"'
    assert re.search(r'use_repo\(\s*pip\s*,\s*"pypi"\s*\)', module), 'MODULE.bazel needs use_repo(pip, "pypi")'
    assert (ROOT / lock_file()).is_file(), f"MODULE.bazel names {lock_file()} for pip.parse, which does not exist"
