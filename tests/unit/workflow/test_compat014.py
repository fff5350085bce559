"""Every option and per-rule resource of the published 0.1.4 is accepted with its meaning.

The lists below are facts read from 0.1.4's released wheel (its ExecutorSettings
fields with their types and defaults, and the resources its offer search and
source scoping read). The end-to-end proof with a 0.1.4 profile and Snakefile is
``tests/e2e/test_e2e_compat014.py``.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from snakemake_executor_plugin_vastai import ExecutorSettings
from snakemake_executor_plugin_vastai.vastai.offers import (
    READ_RESOURCES,
    OfferSettings,
    build_offer_request,
)
from snakemake_executor_plugin_vastai.workflow import deploy
from snakemake_executor_plugin_vastai.workflow.validation import (
    ConfigError,
    validate_job_resources,
    validate_settings,
)

# name: (type in 0.1.4, default in 0.1.4)
OPTIONS_014 = {
    "api_key": (str, None),
    "gpu_name": (str, None),
    "image": (str, None),
    "disk": (float, 40.0),
    "max_price": (float, None),
    "reliability": (float, 0.98),
    "order": (str, "dph_total"),
    "geolocation": (str, None),
    "no_datacenter": (bool, False),
    "search_query": (str, None),
    "boot_timeout": (int, 1800),
    "no_forward_credentials": (bool, False),
    "keep_instances": (bool, False),
    "deploy_paths": (str, None),
    "max_runtime": (int, 0),  # 0 = no cap; ours: None or 0 = no cap
}
RESOURCES_014 = {"gpu", "nvidia_gpu", "gpu_model", "mem_mb", "disk_mb", "vastai_query", "deploy"}
NO_CAP = {"max_runtime": (0, None)}  # the same meaning, spelled differently


def ours() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(ExecutorSettings)}


def base_type(annotation: object) -> type:
    """``Optional[X]`` -> X, as Snakemake does when it builds the argparse option."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation  # type: ignore[return-value]


@pytest.mark.parametrize("name", sorted(OPTIONS_014))
def test_every_0_1_4_option_exists_with_a_type_that_parses_what_0_1_4_parsed(name):
    field = ours().get(name)
    assert field is not None, f"--vastai-{name.replace('_', '-')} is missing"
    old_type, old_default = OPTIONS_014[name]
    new_type = base_type(field.type)
    if old_type is int:
        assert new_type in (int, float)  # every int string parses as a float too
    else:
        assert new_type is old_type
    if name in NO_CAP:
        assert field.default in NO_CAP[name]
    else:
        assert field.default == old_default, (name, field.default)


def test_0_1_4_values_pass_validation():
    values = {name: default for name, (_t, default) in OPTIONS_014.items()}
    values.update(gpu_name="RTX_4090", max_price=1.0, geolocation="EU",
                  search_query="cuda_vers>=12.4", deploy_paths="train.py,scripts/**",
                  max_runtime=3600, image="vastai/pytorch:@vastai-automatic-tag")
    validate_settings(type("S", (), values)())


def test_every_0_1_4_resource_is_read():
    read = {*READ_RESOURCES, deploy.RESOURCE}  # the offer search's and the source scope's
    assert read >= RESOURCES_014


def test_the_0_1_4_readme_rule_resources_choose_the_same_machine():
    resources = {"gpu": 1, "gpu_model": "RTX_4090", "mem_mb": 32000, "disk_mb": 60000,
                 "vastai_query": "cuda_vers>=12.4", "deploy": "train.py,scripts/**"}
    validate_job_resources("train", resources, 8)
    request = build_offer_request(
        OfferSettings(max_price=1.0, geolocation="EU"), resources, 8, rule="train")
    q = request.query
    assert q["num_gpus"] == {"eq": 1}
    assert q["gpu_name"] == {"eq": "RTX 4090"}
    assert q["cpu_cores_effective"] == {"gte": 8}
    assert q["cpu_ram"]["gte"] >= 30517  # 32,000 MB in MiB
    assert q["disk_space"] == {"gte": 60.0} and request.storage_gb == 60.0
    assert q["cuda_max_good"] == {"gte": 12.4}  # the SDK's name for cuda_vers
    assert q["dph_total"] == {"lte": 1.0}
    assert "DE" in q["geolocation"]["in"] and "PL" in q["geolocation"]["in"]
    assert q["datacenter"] == {"eq": True} and q["reliability"] == {"gte": 0.98}


def test_gpu_zero_is_refused_where_0_1_4_rounded_it_up():
    with pytest.raises(ConfigError, match="asks for no GPU"):
        validate_job_resources("prep", {"gpu": 0}, 1)
