#!/usr/bin/env bash
# Offline check of the Bazel BUILD files with the Bazel at hand (Debian's bazel-bootstrap 4.2.3).
#
#   .ci/bazel_check.sh              load, analyse and build every target; under `bazel test`,
#                                   import every library's modules from its own runfiles, and
#                                   run //:build_test (about 75 s of CPU: one TensorFlow import
#                                   per library)
#   .ci/bazel_check.sh --all-tests  ... and every other test target too (minutes)
#   .ci/bazel_check.sh //:x_test    ... and the test targets named
#
# BUILD is written for Bazel 7+ with MODULE.bazel (rules_python, pip hub @pypi), which needs the
# network (Bazel Central Registry, python-build-standalone, PyPI wheels). Bazel 4 ignores
# MODULE.bazel, so the check runs in a scratch copy of the working tree (tracked and untracked,
# non-ignored files) with an empty WORKSPACE and local stand-ins for the repositories:
#   @rules_python   py_library/py_binary/py_test from defs.bzl are Bazel's native rules;
#   @pypi           requirements.bzl's requirement(name) -> @pypi//<name>, one empty py_library
#                   per package pinned in the lock file (an unpinned requirement() fails to build);
#                   at run time the packages come from the python3 on PATH;
#   @rules_cc, @rules_java, @remote_coverage_tools
#                   Bazel 4's own tool repositories, normally downloaded: native rules, and a
#                   coverage tool that fails if called (py_test needs the label, not the tool).
# Nothing is written to the repository: the copy, the output base and the stand-ins live in a
# temporary directory that is deleted at exit, Bazel runs with --batch (no server is left), and
# no bazel-* symlinks are created.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BAZEL="${BAZEL:-bazel}"
ALL_TESTS=0
EXTRA_TESTS=""
for arg in "$@"; do
  case "$arg" in
    --all-tests) ALL_TESTS=1 ;;
    //*) EXTRA_TESTS+=" + $arg" ;;
    *) echo "usage: $0 [--all-tests] [//:test_target ...]" >&2; exit 2 ;;
  esac
done

if ! command -v "$BAZEL" >/dev/null 2>&1; then
  echo "bazel_check: SKIPPED: '$BAZEL' is not installed (Debian/Ubuntu: apt-get install bazel-bootstrap)."
  exit 0
fi
version="$("$BAZEL" --version 2>/dev/null | awk '{print $2}' || true)"
major="${version%%.*}"
if [[ "$major" =~ ^[0-9]+$ ]] && (( major >= 7 )); then
  echo "bazel_check: SKIPPED: Bazel $version reads MODULE.bazel itself; this script emulates it for"
  echo "  the offline Bazel 4. With network access run: bazel build //... && bazel test //..."
  exit 0
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/bazel_check.XXXXXX")"
cleanup() {
  chmod -R u+w "$TMP" 2>/dev/null || true  # the output base holds read-only files
  rm -rf "$TMP"
}
trap cleanup EXIT
WS="$TMP/ws"
STUBS="$TMP/stubs"
mkdir -p "$WS" "$STUBS"

section() { printf '\n== %s\n' "$*"; }

section "Copying the working tree to a scratch workspace"
cd "$REPO"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do
        case "$f" in bazel-*|*/__pycache__/*|__pycache__/*|*.pyc) continue ;; esac
        if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi  # skips deleted, not yet committed files
      done \
    | tar --null -T - -cf - | tar -xf - -C "$WS"
else
  tar --exclude=.git --exclude='./bazel-*' --exclude=__pycache__ -cf - . | tar -xf - -C "$WS"
fi
# Bazel 4 reads WORKSPACE, not MODULE.bazel; an rc file written for a newer Bazel could hold
# flags Bazel 4 rejects, so workspace and home rc files are not read (--noworkspace_rc --nohome_rc).
rm -f "$WS/WORKSPACE.bazel" "$WS/WORKSPACE.bzlmod"
echo 'workspace(name = "clr_loop")' > "$WS/WORKSPACE"
echo "copied $(find "$WS" -type f | wc -l) files from $REPO"

LOCK="$(sed -nE 's|.*requirements_lock *= *"//:([^"]+)".*|\1|p' "$WS/MODULE.bazel" 2>/dev/null | head -n1)"
LOCK="${LOCK:-requirements_lock.txt}"
if [[ ! -f "$WS/$LOCK" ]]; then
  echo "bazel_check: FAILED: MODULE.bazel's lock file $LOCK does not exist" >&2
  exit 1
fi

section "Writing stand-ins for @rules_python, @pypi (from $LOCK) and Bazel's tool repositories"
mkdir -p "$STUBS/rules_python/python"
touch "$STUBS/rules_python/WORKSPACE" "$STUBS/rules_python/BUILD" "$STUBS/rules_python/python/BUILD"
cat > "$STUBS/rules_python/python/defs.bzl" <<'EOF'
py_binary = native.py_binary
py_library = native.py_library
py_test = native.py_test
py_runtime = native.py_runtime
EOF

mkdir -p "$STUBS/pypi"
touch "$STUBS/pypi/WORKSPACE"
echo 'exports_files(["requirements.bzl"])' > "$STUBS/pypi/BUILD"
cat > "$STUBS/pypi/requirements.bzl" <<'EOF'
def _normalize(name):
    out = ""
    for c in name.lower().elems():
        out += "_" if c in "-." else c
    return out

def requirement(name):
    return "@pypi//" + _normalize(name)
EOF
packages=()
while IFS= read -r pkg; do
  packages+=("$pkg")
  mkdir -p "$STUBS/pypi/$pkg"
  cat > "$STUBS/pypi/$pkg/BUILD" <<EOF
package(default_visibility = ["//visibility:public"])

py_library(name = "$pkg")

alias(
    name = "pkg",
    actual = ":$pkg",
)
EOF
done < <(sed -nE 's/^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^]]*\])?[[:space:]]*==.*/\1/p' "$WS/$LOCK" \
          | tr 'A-Z.-' 'a-z__' | sort -u)
echo "@pypi: ${#packages[@]} packages pinned in $LOCK"

mkdir -p "$STUBS/rules_cc/cc"
touch "$STUBS/rules_cc/WORKSPACE"
echo 'exports_files(["defs.bzl"])' > "$STUBS/rules_cc/cc/BUILD"
cat > "$STUBS/rules_cc/cc/defs.bzl" <<'EOF'
cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_proto_library = native.cc_proto_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
fdo_prefetch_hints = native.fdo_prefetch_hints
fdo_profile = native.fdo_profile
objc_import = native.objc_import
objc_library = native.objc_library
EOF

mkdir -p "$STUBS/rules_java/java"
touch "$STUBS/rules_java/WORKSPACE"
echo 'exports_files(["defs.bzl"])' > "$STUBS/rules_java/java/BUILD"
cat > "$STUBS/rules_java/java/defs.bzl" <<'EOF'
java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_package_configuration = native.java_package_configuration
java_plugin = native.java_plugin
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
EOF

mkdir -p "$STUBS/remote_coverage_tools"
touch "$STUBS/remote_coverage_tools/WORKSPACE"
printf '#!/bin/sh\necho "coverage is not available in the offline Bazel check" >&2\nexit 1\n' \
  > "$STUBS/remote_coverage_tools/unavailable.sh"
chmod +x "$STUBS/remote_coverage_tools/unavailable.sh"
cat > "$STUBS/remote_coverage_tools/BUILD" <<'EOF'
package(default_visibility = ["//visibility:public"])

sh_binary(
    name = "coverage_report_generator",
    srcs = ["unavailable.sh"],
)

sh_binary(
    name = "lcov_merger",
    srcs = ["unavailable.sh"],
)
EOF

# One import-check py_test per py_library and py_binary (but a binary that only wraps its module's
# library): it imports the target's modules from that target's runfiles only, so a first-party dep
# missing from BUILD is an ImportError here.
mkdir -p "$WS/_bazel_check"
echo 'exports_files(["import_check.py"])' > "$WS/_bazel_check/BUILD"
cat > "$WS/_bazel_check/import_check.py" <<'EOF'
"""Imports the modules named on the command line; each must come from this test's runfiles."""

import importlib
import os
import sys

runfiles = os.path.abspath(os.environ["TEST_SRCDIR"]) + os.sep
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    where = os.path.abspath(module.__file__)
    if not where.startswith(runfiles):
        sys.exit(f"{name} was imported from {where}, outside the runfiles {runfiles}")
    print(f"imported {name} from {where[len(runfiles):]}")
EOF
cat > "$WS/_bazel_check/import_check.bzl" <<'EOF'
load("@rules_python//python:defs.bzl", "py_test")

_CHECK = "//_bazel_check:import_check.py"

def _module(src):
    path = src.split(":")[-1]
    if not path.endswith(".py"):
        return None
    path = path[:-len(".py")]
    if path.endswith("/__init__"):
        path = path[:-len("/__init__")]
    return path.replace("/", ".")

def _wraps_one_library(rule, rules):
    # A py_binary whose only dep is the library of its main module has that library's closure,
    # which the library's own check imports already.
    if rule["kind"] != "py_binary" or len(rule["deps"]) != 1:
        return False
    dep = rules.get(rule["deps"][0].split(":")[-1])
    return dep != None and all([s in dep["srcs"] for s in rule["srcs"]])

def import_checks():
    rules = native.existing_rules()
    for name, rule in sorted(rules.items()):
        if rule["kind"] not in ("py_library", "py_binary") or _wraps_one_library(rule, rules):
            continue
        modules = [m for m in [_module(s) for s in rule["srcs"]] if m]
        if not modules:
            continue
        py_test(
            name = "import_check_" + name,
            size = "small",
            srcs = [_CHECK] + list(rule["srcs"]),
            main = _CHECK,
            args = modules,
            deps = list(rule["deps"]),
            data = list(rule["data"]),
            testonly = True,
            tags = ["bazel_check"],
        )
EOF
# Bazel reads BUILD.bazel in preference to BUILD, which stays as it is for //:build_test to read.
# The load goes on BUILD's first line so that line numbers in Bazel's messages match BUILD's.
{ printf 'load("//_bazel_check:import_check.bzl", "import_checks"); '; cat "$WS/BUILD"; echo; echo 'import_checks()'; } \
  > "$WS/BUILD.bazel"

cd "$WS"
BZ=("$BAZEL" --batch --nohome_rc --noworkspace_rc --output_base="$TMP/output_base")
LOADING=(
  --override_repository=rules_python="$STUBS/rules_python"
  --override_repository=pypi="$STUBS/pypi"
  --override_repository=rules_cc="$STUBS/rules_cc"
  --override_repository=rules_java="$STUBS/rules_java"
  --override_repository=remote_coverage_tools="$STUBS/remote_coverage_tools"
  --incompatible_disallow_empty_glob  # the default from Bazel 8 on
  --noshow_progress
)
BUILDING=("${LOADING[@]}" --symlink_prefix=/ --curses=no --color=no)  # --symlink_prefix=/: no bazel-* links
# Drops progress chatter; paths in the scratch copy are shown relative to the repository.
quiet() {
  grep -vE '^(OpenJDK 64-Bit Server VM warning|INFO: |Loading:|Analyzing:|\[[0-9,]+ / [0-9,]+\])|linux-sandbox(-pid1)?\.cc:' \
    | sed -e "s|$WS/||g" -e "s|BUILD\.bazel|BUILD|g" || true
}

bazel_quiet() { "${BZ[@]}" "$@" 2>&1 | quiet; return "${PIPESTATUS[0]}"; }
fail() { echo "bazel_check: FAILED: $*" >&2; exit 1; }

section "bazel query: load BUILD and list its targets"
bazel_quiet query "${LOADING[@]}" --output=label_kind \
  'kind("py_library|py_binary|py_test", //...) except attr(tags, bazel_check, //...)' \
  || fail "BUILD does not load (bazel query)"

section "bazel build --keep_going //...: analyse every target, check every source and data file exists, build runfiles"
bazel_quiet build "${BUILDING[@]}" --keep_going //... || fail "bazel build //..."

if (( ALL_TESTS )); then
  tests="tests(//...)"
  what="every test target, the import checks included"
else
  tests="//:build_test + attr(tags, bazel_check, //...)$EXTRA_TESTS"
  what="one import check per library and binary, //:build_test${EXTRA_TESTS//+ /}"
fi
section "bazel test: $what"
mapfile -t test_targets < <("${BZ[@]}" query "${LOADING[@]}" "$tests" 2>/dev/null)
(( ${#test_targets[@]} > 0 )) || fail "no test targets found for: $tests"
bazel_quiet test "${BUILDING[@]}" --test_output=errors --test_summary=short \
  --test_env=TF_CPP_MIN_LOG_LEVEL=2 "${test_targets[@]}" || fail "bazel test"

ran_tests="//:build_test${EXTRA_TESTS//+ /}"
bazel_name="$("$BAZEL" --version 2>/dev/null || true)"
if command -v dpkg-query >/dev/null && dpkg-query -W bazel-bootstrap >/dev/null 2>&1; then
  bazel_name="$bazel_name (Debian $(dpkg-query -W -f='${Package} ${Version}' bazel-bootstrap))"
fi
(( ALL_TESTS )) && ran_tests="every test target"
section "Summary"
cat <<EOF
bazel_check: PASSED offline with $bazel_name.
Checked: BUILD loads; every target analyses and builds (sources, data files, labels, requirement()s
  of pinned packages); each library and binary imports its modules from its own runfiles (the
  first-party deps are complete); the pytest_test macro works: $ran_tests passed under bazel test.
Not checked offline: MODULE.bazel itself (bzlmod needs Bazel 7+ and the Bazel Central Registry),
  rules_python's hermetic Python, and the pip wheels pinned in $LOCK (PyPI): here the stand-in
  @pypi is empty and the python3 on PATH supplies the packages, so a missing requirement() is
  caught by tests/build_test.py, not here; bazel coverage (needs the downloaded coverage tools).
EOF
