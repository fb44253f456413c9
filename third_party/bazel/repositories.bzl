"""Offline stand-ins for Bazel 4's built-in downloads, and fmx's Python toolchain.

Bazel 4's built-in WORKSPACE suffix fetches rules_cc, rules_java and
remote_coverage_tools from the network even for a Python-only build. Declaring
repositories of the same names first makes Bazel use these instead. Each rule
writes its files into the output base (not this tree), so no extra packages
show up under `//...`.
"""

def _wrappers_repo_impl(ctx):
    # `@rules_cc//cc:defs.bzl` and `@rules_java//java:defs.bzl` are loaded by
    # @bazel_tools; thin wrappers around the native rules are all they need.
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD", "")
    ctx.file(ctx.attr.package + "/BUILD", "")
    ctx.file(ctx.attr.package + "/defs.bzl", "".join([
        "def {rule}(**kwargs):\n    native.{rule}(**kwargs)\n\n".format(rule = rule)
        for rule in ctx.attr.rules
    ]))

_wrappers_repo = repository_rule(
    implementation = _wrappers_repo_impl,
    attrs = {"package": attr.string(), "rules": attr.string_list()},
)

_NO_COVERAGE = """#!/bin/sh
echo "$0: coverage needs Bazel's real remote_coverage_tools, which this offline" >&2
echo "workspace replaces with a stand-in (see docs/bazel.md)." >&2
exit 1
"""

def _coverage_tools_impl(ctx):
    # Every test rule has these two as implicit dependencies; they only run
    # under `bazel coverage`, which is not supported offline.
    ctx.file("WORKSPACE", "workspace(name = \"remote_coverage_tools\")\n")
    ctx.file("no_coverage.sh", _NO_COVERAGE, executable = True)
    ctx.file("BUILD", """package(default_visibility = ["//visibility:public"])

sh_binary(name = "coverage_report_generator", srcs = ["no_coverage.sh"])

sh_binary(name = "lcov_merger", srcs = ["no_coverage.sh"])
""")

_coverage_tools = repository_rule(implementation = _coverage_tools_impl)

def _python_impl(ctx):
    # py_runtime needs an absolute interpreter path, which depends on where
    # the clone is: FMX_PYTHON (e.g. `--repo_env=FMX_PYTHON=...`) or the
    # project's virtual environment. Not resolved through symlinks: a venv's
    # python finds its site-packages from the path it was started as.
    python = ctx.os.environ.get("FMX_PYTHON", "")
    if not python:
        workspace = ctx.path(Label("@//:WORKSPACE")).dirname
        python = "%s/.venv/bin/python" % workspace
    if not python.startswith("/"):
        fail("FMX_PYTHON must be an absolute path, not %r" % python)
    if not ctx.path(python).exists:
        fail("no Python at %s: run `make bazel-test` (it creates .venv) or set FMX_PYTHON" % python)
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD", """load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "python3",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(name = "runtime_pair", py3_runtime = ":python3")

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python))

_python = repository_rule(
    implementation = _python_impl,
    environ = ["FMX_PYTHON"],
    local = True,
)

def fmx_offline_repositories():
    """Declares the stand-ins and the Python toolchain; call first in WORKSPACE."""
    _wrappers_repo(
        name = "rules_cc",
        package = "cc",
        rules = ["cc_binary", "cc_import", "cc_library", "cc_proto_library",
                 "cc_test", "cc_toolchain", "cc_toolchain_suite", "fdo_prefetch_hints",
                 "fdo_profile", "objc_import", "objc_library"],
    )
    _wrappers_repo(
        name = "rules_java",
        package = "java",
        rules = ["java_binary", "java_import", "java_library", "java_lite_proto_library",
                 "java_package_configuration", "java_plugin", "java_proto_library",
                 "java_runtime", "java_test", "java_toolchain"],
    )
    _coverage_tools(name = "remote_coverage_tools")
    _python(name = "fmx_python")
