"""Checks that BUILD keeps up with the sources: every module, app and test file has its target, and
every target's deps match what its files import. No Bazel needed: BUILD is evaluated as Python with
stand-ins for the Bazel functions it calls, and imports are read with `ast`.

The file system is the oracle (clr_loop/**/*.py, tests/*_test.py are scanned, never listed here),
so a new module or test without a BUILD entry fails, with the stanza to add in the message.
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
PACKAGE = "clr_loop"
TEST_GLOB = "tests/*_test.py"
PYTEST_MACRO_RUNNER = "tools/pytest_main.py"

# Import name -> pip distribution, where they differ; otherwise the import name is the distribution.
IMPORT_TO_DIST = {
    "absl": "absl-py",
    "google.protobuf": "protobuf",
    "PIL": "pillow",
    "yaml": "pyyaml",
}

LIBRARY, BINARY, TEST = "py_library", "py_binary", "py_test"


def normalize_dist(name):
    """Returns the PEP 503 form of a distribution name, the one rules_python's hub repos use."""
    return re.sub(r"[-_.]+", "_", name).lower()


@dataclasses.dataclass
class Target:
    """One rule call in BUILD: its kind (LIBRARY, BINARY or TEST), name and attributes."""

    kind: str
    name: str
    srcs: list
    deps: list
    data: list
    main: str = None
    lineno: int = 0


class Build:
    """Evaluates BUILD with stand-ins for load(), the rules, glob() and requirement()."""

    def __init__(self, root):
        self.root = root
        self.targets = {}
        self.errors = []
        self.loads = {
            "@rules_python//python:defs.bzl": {
                "py_library": self._rule(LIBRARY),
                "py_binary": self._rule(BINARY),
                "py_test": self._rule(TEST),
            },
            "@pypi//:requirements.bzl": {"requirement": lambda name: "@pypi//" + normalize_dist(name)},
            "//tools:pytest.bzl": {"pytest_test": self._pytest_test},
        }
        self.namespace = {
            "load": self._load,
            "glob": self._glob,
            "package": lambda **kwargs: None,
            "exports_files": lambda srcs, **kwargs: self.exported.update(srcs),
        }
        self.exported = set()
        source = (root / "BUILD").read_text()
        exec(compile(source, str(root / "BUILD"), "exec"), self.namespace)

    def _load(self, bzl, *symbols, **aliases):
        known = self.loads.get(bzl)
        if known is None:
            raise AssertionError(f"BUILD loads {bzl}, which tests/build_test.py does not model; add it to Build.loads")
        for local, symbol in [(s, s) for s in symbols] + list(aliases.items()):
            if symbol not in known:
                raise AssertionError(f"BUILD loads {symbol} from {bzl}; tests/build_test.py only models {sorted(known)}")
            self.namespace[local] = known[symbol]

    def _glob(self, include, exclude=(), allow_empty=False, **kwargs):
        matches = set()
        for pattern in include:
            matches.update(p for p in self.root.glob(pattern) if p.is_file())
        for pattern in exclude:
            matches.difference_update(self.root.glob(pattern))
        if not matches and not allow_empty:
            # Bazel 8 makes an empty glob an error (--incompatible_disallow_empty_glob).
            self.errors.append(f"glob({list(include)}) in BUILD matches no file")
        return sorted(p.relative_to(self.root).as_posix() for p in matches)

    def _rule(self, kind):
        def rule(name, srcs=(), deps=(), data=(), main=None, **kwargs):
            if name in self.targets:
                self.errors.append(f"BUILD defines //:{name} twice")
            frame = sys._getframe(1)
            while frame and frame.f_code.co_filename != str(self.root / "BUILD"):
                frame = frame.f_back
            lineno = frame.f_lineno if frame else 0
            self.targets[name] = Target(kind, name, list(srcs), list(deps), list(data), main, lineno)

        return rule

    def _pytest_test(self, name, srcs, deps=(), **kwargs):
        # Mirrors tools/pytest.bzl: the runner becomes the main, pytest a dep.
        if len(srcs) != 1:
            self.errors.append(f"pytest_test //:{name} must have exactly one src, has {srcs}")
        self._rule(TEST)(
            name, srcs=list(srcs) + ["//" + PYTEST_MACRO_RUNNER.replace("/", ":", 1)],
            deps=list(deps) + ["@pypi//pytest"], main=PYTEST_MACRO_RUNNER, **kwargs)

    def local_path(self, label):
        """Returns the repo-relative path a label names, or None for a target or another repository."""
        if label.startswith("@"):
            return None
        if label.startswith("//"):
            package, _, name = label[2:].partition(":")
            if not package and name in self.targets:
                return None
            return f"{package}/{name}" if package else name
        name = label[1:] if label.startswith(":") else label
        return None if name in self.targets else name

    def target_of(self, label):
        """Returns the Target a label names in this BUILD, or None."""
        for prefix in ("//:", ":"):
            if label.startswith(prefix):
                label = label[len(prefix):]
                break
        else:
            if label.startswith(("//", "@")):
                return None
        return self.targets.get(label)

    def owners(self, path, kinds=(LIBRARY,)):
        """Returns the names of the targets of `kinds` whose srcs contain `path`, sorted."""
        return sorted(t.name for t in self.targets.values()
                      if t.kind in kinds and path in [self.local_path(s) for s in t.srcs])


@pytest.fixture(scope="module")
def build():
    return Build(ROOT)


def module_files():
    """Returns the repo-relative paths of the package's modules, sorted."""
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py"))


def pytest_files():
    """Returns the repo-relative paths of the test files, sorted."""
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(TEST_GLOB))


def module_name(path):
    """Returns the dotted module name of a repo-relative .py path ("clr_loop/__init__.py" -> "clr_loop")."""
    parts = path[: -len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def parse(path):
    """Returns the module AST of a repo-relative .py path, or None if it does not parse
    (test_sources_parse reports that)."""
    try:
        return ast.parse((ROOT / path).read_text(), path)
    except SyntaxError:
        return None


def is_app(path):
    """Returns whether the file runs as a program: it has an `if __name__ == "__main__":` block."""
    for node in getattr(parse(path), "body", []):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            strings = [n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)]
            if names == ["__name__"] and strings == ["__main__"]:
                return True
    return False


def imported_modules(path):
    """Returns the dotted module names `path` imports, sorted: `import a.b` gives a.b, and
    `from a import b` gives a.b when that is a first-party module file, else a (b is an attribute)."""
    tree = parse(path) or ast.Module(body=[], type_ignores=[])
    package = module_name(path) if path.endswith("__init__.py") else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
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


def first_party_file(name, importer):
    """Returns the repo file that module `name` is, if first-party, else None. pytest puts a test's
    directory on sys.path, so a test may also import its siblings."""
    if not name:
        return None
    roots = [ROOT] + ([ROOT / Path(importer).parent] if importer.startswith("tests/") else [])
    for root in roots:
        stem = root / name.replace(".", "/")
        for candidate in (stem.with_name(stem.name + ".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate.relative_to(ROOT).as_posix()
    return None


def requirements(path):
    """Returns what `path` imports: (first-party files, pip distributions normalized), each sorted."""
    files, dists = set(), set()
    for name in imported_modules(path):
        resolved = first_party_file(name, path)
        top = name.split(".")[0]
        if resolved:
            files.add(resolved)
        elif top not in sys.stdlib_module_names and not first_party_file(top, path):
            dist = next((d for prefix, d in IMPORT_TO_DIST.items()
                         if name == prefix or name.startswith(prefix + ".")), top)
            dists.add(normalize_dist(dist))
    return sorted(files), sorted(dists)


def locked_dists():
    lock = ROOT / "requirements_lock.txt"
    names = set()
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==", line)
        if match:
            names.add(normalize_dist(match.group(1)))
    return names


def stanza(kind, name, path, build):
    """Returns a BUILD rule call for `path` with deps computed from its imports (for failure messages)."""
    files, dists = requirements(path)
    conftest = (Path(path).parent / "conftest.py").as_posix()
    if kind == "pytest_test" and (ROOT / conftest).is_file():
        files.append(conftest)  # pytest imports it before the test file
    deps = [f'":{(build.owners(f) or [suggested_name(f)])[0]}"' for f in files if f != path]
    deps += [f'requirement("{d.replace("_", "-")}")' for d in dists if not (kind == "pytest_test" and d == "pytest")]
    lines = [f"{kind}(", f'    name = "{name}",', f'    srcs = ["{path}"],']
    if deps:
        lines += ["    deps = ["] + [f"        {d}," for d in sorted(set(deps))] + ["    ],"]
    return "\n".join(lines + [")"])


def suggested_name(path):
    base = Path(path).stem if Path(path).name != "__init__.py" else Path(path).parent.name
    return base + "_lib" if path.startswith(PACKAGE + "/") and is_app(path) else base


def test_sources_parse(build):
    paths = set(module_files()) | set(pytest_files())
    paths |= {p for t in build.targets.values() for p in sources(t, build)}
    problems = []
    for path in sorted(paths):
        try:
            ast.parse((ROOT / path).read_text(), path)
        except SyntaxError as e:
            problems.append(f"{path}:{e.lineno}: {e.msg} (its imports cannot be checked)")
    assert not problems, "\n".join(problems)


def test_build_evaluates_cleanly(build):
    assert not build.errors, "BUILD problems:\n" + "\n".join(build.errors)


def test_every_module_has_exactly_one_library(build):
    problems = []
    for path in module_files():
        owners = build.owners(path)
        if not owners:
            problems.append(f"{path} has no py_library in BUILD; add:\n\n"
                            + stanza("py_library", suggested_name(path), path, build))
        elif len(owners) > 1:
            problems.append(f"{path} is in the srcs of several py_libraries ({', '.join(owners)}); keep one")
    for target in sorted(build.targets.values(), key=lambda t: t.name):
        if target.kind == LIBRARY and len(target.srcs) != 1 and any(
                (build.local_path(s) or "").startswith(PACKAGE + "/") for s in target.srcs):
            problems.append(f"//:{target.name} has srcs {target.srcs}: one module per py_library")
    assert not problems, "\n\n".join(problems)


def test_every_app_has_a_binary(build):
    problems = []
    for path in module_files():
        if is_app(path) and not build.owners(path, kinds=(BINARY,)):
            name = Path(path).stem
            lib = (build.owners(path) or [suggested_name(path)])[0]
            problems.append(
                f'{path} has an `if __name__ == "__main__":` block but no py_binary in BUILD; add:\n\n'
                f'py_binary(\n    name = "{name}",\n    srcs = ["{path}"],\n    main = "{path}",\n'
                f'    deps = [":{lib}"],\n)')
    for target in sorted(build.targets.values(), key=lambda t: t.name):
        if target.kind != BINARY:
            continue
        main = build.local_path(target.main) if target.main else None
        if main not in [build.local_path(s) for s in target.srcs]:
            problems.append(f"py_binary //:{target.name}: main = {target.main!r} must be one of its srcs")
        elif parse(main) and not is_app(main):
            problems.append(f'py_binary //:{target.name}: {main} has no `if __name__ == "__main__":` block, '
                            "so running the binary would do nothing")
    assert not problems, "\n\n".join(problems)


def test_every_test_file_has_one_test_target(build):
    problems = []
    for path in pytest_files():
        owners = build.owners(path, kinds=(TEST,))
        if not owners:
            problems.append(f"{path} has no test target in BUILD; add:\n\n"
                            + stanza("pytest_test", Path(path).stem, path, build))
        elif len(owners) > 1:
            problems.append(f"{path} is in several test targets ({', '.join(owners)}); keep one")
    assert not problems, "\n\n".join(problems)


def test_referenced_files_exist(build):
    problems = []
    for target in sorted(build.targets.values(), key=lambda t: t.name):
        for label in target.srcs + target.data + ([target.main] if target.main else []):
            path = build.local_path(label)
            if path is not None and not (ROOT / path).exists():
                problems.append(f"//:{target.name} (BUILD line {target.lineno}) refers to {label}, "
                                f"but {path} does not exist: create it or remove it from the target")
        for label in target.deps:
            if build.local_path(label) is not None and not label.startswith("@"):
                problems.append(f"//:{target.name} has dep {label}, which is not a target in BUILD")
    assert not problems, "\n".join(problems)


def sources(target, build):
    """Returns the repo-relative .py files in a target's srcs that exist, sorted."""
    paths = {build.local_path(s) for s in target.srcs}
    return sorted(p for p in paths if p and p.endswith(".py") and (ROOT / p).is_file())


def wrapped(target, build):
    """Returns the targets among `target`'s deps that share one of its srcs (the library of a
    py_binary's main module): their deps reach `target` as if it had declared them."""
    own = {build.local_path(s) for s in target.srcs}
    deps = [build.target_of(label) for label in target.deps]
    return [d for d in deps if d and own & {build.local_path(s) for s in d.srcs}]


def test_first_party_deps_match_imports(build):
    problems = []
    for target in sorted(build.targets.values(), key=lambda t: t.name):
        own = {build.local_path(s) for s in target.srcs}
        if any(p and not (ROOT / p).is_file() for p in own):
            continue  # test_referenced_files_exist reports the missing file
        direct = {t.name: t for t in (build.target_of(d) for d in target.deps) if t}
        reachable = dict(direct)
        for lib in wrapped(target, build):
            reachable.update({t.name: t for t in (build.target_of(d) for d in lib.deps) if t})
        used = {lib.name for lib in wrapped(target, build)}
        for path in sources(target, build):
            files = requirements(path)[0]
            conftest = (Path(path).parent / "conftest.py").as_posix()
            if target.kind == TEST and (ROOT / conftest).is_file():
                files.append(conftest)  # pytest imports it before the test file
            for file in files:
                if file in own:
                    continue
                providers = [n for n, t in reachable.items() if file in {build.local_path(s) for s in t.srcs}]
                used.update(providers)
                if not providers:
                    owner = (build.owners(file) or [f"<the py_library of {file}>"])[0]
                    problems.append(f'//:{target.name}: {path} imports {module_name(file)} ({file}); '
                                    f'add ":{owner}" to the deps of //:{target.name}')
        for name in sorted(set(direct) - used):
            problems.append(f'//:{target.name}: dep ":{name}" is not imported by {", ".join(sources(target, build))}; '
                            f"remove it from the deps of //:{target.name}")
    assert not problems, "\n".join(problems)


def test_third_party_deps_are_declared_and_locked(build):
    locked = locked_dists()
    problems = []
    for target in sorted(build.targets.values(), key=lambda t: t.name):
        labels = target.deps + [d for lib in wrapped(target, build) for d in lib.deps]
        declared = {d[len("@pypi//"):].split(":")[0] for d in labels if d.startswith("@pypi//")}
        for dist in sorted(declared - locked):
            problems.append(f"//:{target.name}: pip package {dist} is not pinned in requirements_lock.txt")
        for path in sources(target, build):
            for dist in requirements(path)[1]:
                if dist not in declared:
                    problems.append(f"//:{target.name}: {path} imports the pip package {dist}; add "
                                    f'requirement("{dist.replace("_", "-")}") to the deps of //:{target.name}'
                                    + ("" if dist in locked else " and pin it in requirements_lock.txt")
                                    + " (or, if the import name differs from the package name, map it in "
                                    "IMPORT_TO_DIST in tests/build_test.py)")
        for label in target.deps:
            if label.startswith("@") and not label.startswith("@pypi//"):
                problems.append(f"//:{target.name}: dep {label} is from a repository other than @pypi")
    assert not problems, "\n".join(problems)


def test_module_bazel_uses_the_lock_file():
    module = (ROOT / "MODULE.bazel").read_text()
    assert 'hub_name = "pypi"' in module, "MODULE.bazel: pip.parse must name its hub \"pypi\" (BUILD loads @pypi)"
    lock = re.search(r'requirements_lock = "//:([^"]+)"', module)
    assert lock, "MODULE.bazel: pip.parse has no requirements_lock = \"//:<file>\""
    assert (ROOT / lock.group(1)).is_file(), f"MODULE.bazel names {lock.group(1)}, which does not exist"
