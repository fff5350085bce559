"""Scoped source shipping (deploy.py): which of the workflow's sources travel.

Pure functions against lists of paths; the end-to-end proof that only these
bytes reach an instance is in ``tests/e2e/test_e2e_compat014.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_vastai.run.startup import resolve_image
from snakemake_executor_plugin_vastai.workflow.deploy import (
    Scope,
    check_every_pattern_matches,
    collect_scope,
    matches,
    select,
)
from snakemake_executor_plugin_vastai.workflow.validation import (
    ConfigError,
    deploy_patterns,
    validate_job_resources,
    validate_settings,
)

# A monorepo's sources as Snakemake lists them (relative to the working directory).
SOURCES = [
    "Snakefile", "rules/train.smk", "config/config.yaml", "train.py", "eval.py",
    "scripts/prep.py", "scripts/lib/util.py", "docs/index.md", "pkg/a/mod.py",
    "pkg/b/mod.py", "requirements-train.txt", "other/Snakefile", "envs/torch.yaml",
]  # fmt: skip


# -- the patterns ------------------------------------------------------------------------
def test_patterns_are_split_on_commas_stripped_and_deduplicated():
    assert deploy_patterns(" train.py, ./scripts/** ,,train.py,", "--vastai-deploy-paths") == (
        "train.py", "scripts/**")


@pytest.mark.parametrize("value, words", [
    (3, ["rule r: resource deploy=3", "comma-separated paths"]),
    ("train.py,/etc/passwd", ["'/etc/passwd'", "outside the working directory"]),
    ("../sibling/x.py", ["'../sibling/x.py'", "outside the working directory"]),
    ("a/../../b", ["outside the working directory"]),
])  # fmt: skip
def test_a_bad_deploy_resource_names_the_rule(value, words):
    with pytest.raises(ConfigError) as err:
        validate_job_resources("r", {"deploy": value}, 1)
    for word in words:
        assert word in str(err.value)


def test_a_bad_deploy_paths_option_names_the_option():
    with pytest.raises(ConfigError, match=r"--vastai-deploy-paths='/abs/x'.*outside"):
        validate_settings(SimpleNamespace(deploy_paths="/abs/x"))
    validate_settings(SimpleNamespace(deploy_paths="train.py,scripts/**"))  # fine


def test_an_unevaluated_deploy_resource_is_skipped_by_validation_but_refused_by_the_scope():
    validate_job_resources("r", {"deploy": "<TBD>"}, 1)
    with pytest.raises(ConfigError, match="rule r: resource deploy depends on input files"):
        collect_scope(None, [("r", "<TBD>")])


# -- the union -------------------------------------------------------------------------
def test_the_option_and_every_rule_are_unioned_and_remember_who_asked():
    scope = collect_scope("train.py", [("train", "train.py,scripts/**"), ("eval", None),
                                       ("eval2", "eval.py"), ("train", "train.py")])
    assert scope.patterns == ("train.py", "scripts/**", "eval.py")
    assert scope.origins["train.py"] == ("--vastai-deploy-paths", "rule train: resource deploy")
    assert scope.origins["eval.py"] == ("rule eval2: resource deploy",)
    assert scope.narrows


def test_no_pattern_anywhere_ships_everything():
    scope = collect_scope(None, [("a", None), ("b", "")])
    assert not scope.narrows
    assert select(SOURCES, scope, pinned=[]) == SOURCES


# -- what a pattern selects ------------------------------------------------------------
@pytest.mark.parametrize("path, pattern, expected", [
    ("train.py", "train.py", True),
    ("scripts/lib/util.py", "scripts/**", True),
    ("scripts/lib/util.py", "scripts", True),
    ("scripts/lib/util.py", "scripts/", True),
    ("scriptsX/a.py", "scripts", False),
    ("pkg/a/mod.py", "*.py", True),  # fnmatch: * crosses '/' (as in 0.1.4)
    ("pkg/a/mod.py", "pkg/*/mod.py", True),
    ("pkg/a/mod.py", "pkg/?/mod.py", True),
    ("Train.py", "train.py", False),  # case-sensitive on every platform
    ("docs/index.md", "*.py", False),
])  # fmt: skip
def test_matches(path, pattern, expected):
    assert matches(path, pattern) is expected


def test_a_narrowed_scope_keeps_pinned_files_and_workflow_definitions():
    scope = collect_scope(None, [("train", "train.py,scripts/**")])
    kept = select(SOURCES, scope, pinned=["config/config.yaml", "envs/torch.yaml"])
    assert kept == ["Snakefile", "rules/train.smk", "config/config.yaml", "train.py",
                    "scripts/prep.py", "scripts/lib/util.py", "other/Snakefile",
                    "envs/torch.yaml"]


def test_pinned_paths_are_compared_in_normal_form():
    scope = Scope(("train.py",), {})
    assert select(["./config/c.yaml", "x.txt"], scope, pinned=["config/./c.yaml"]) == [
        "./config/c.yaml"]


def test_a_pattern_that_selects_nothing_is_an_error_naming_who_gave_it():
    scope = collect_scope("train.py", [("train", "scripts/**,trian.py"), ("b", "trian.py")])
    with pytest.raises(ConfigError) as err:
        check_every_pattern_matches(scope, SOURCES)
    text = str(err.value)
    assert text.startswith("rule train: resource deploy: 'trian.py' selects no file")
    assert "also given by rule b: resource deploy" in text
    assert "git add" in text
    check_every_pattern_matches(collect_scope("train.py,scripts", []), SOURCES)  # fine


# -- the image (0.1.4 honoured an explicit --container-image) ------------------------------
@pytest.mark.parametrize("image, container, expected", [
    (None, None, "vastai/pytorch:@vastai-automatic-tag"),
    (None, "snakemake/snakemake:v9.15.0", "vastai/pytorch:@vastai-automatic-tag"),
    (None, "ghcr.io/me/cuda:12", "ghcr.io/me/cuda:12"),
    ("me/own:1", "ghcr.io/me/cuda:12", "me/own:1"),
])  # fmt: skip
def test_the_image_is_vastai_image_then_an_explicit_container_image(image, container, expected):
    assert resolve_image(SimpleNamespace(image=image), container) == expected


def test_an_explicit_container_image_is_checked_like_vastai_image():
    with pytest.raises(ConfigError, match="--container-image='Me/Bad Image'"):
        resolve_image(SimpleNamespace(image=None), "Me/Bad Image")
