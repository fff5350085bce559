"""Early validation: every bad input is refused with an error naming its culprit.

The search (offers.py) uses the same parsers, so each bad job resource here
must also make ``build_offer_request`` fail, with the same message.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings, build_offer_request
from snakemake_executor_plugin_vastai.workflow import validation as validation_module
from snakemake_executor_plugin_vastai.workflow.validation import (
    REGION_COUNTRIES,
    ConfigError,
    expand_geolocation,
    parse_filters,
    parse_image_reference,
    parse_order,
    validate_job_resources,
    validate_settings,
)


def settings(**overrides) -> SimpleNamespace:
    values = dict(
        api_key=None, api_url=None, gpu_name=None, max_price=None, geolocation=None, disk=40,
        image="vastai/pytorch:@vastai-automatic-tag", reliability=0.98, no_datacenter=False,
        order="dph_total", search_query=None, boot_timeout=1800, no_forward_credentials=False,
        keep_instances=False,
    )  # fmt: skip
    return SimpleNamespace(**(values | overrides))


# -- bad job resources -----------------------------------------------------------------
BAD_RESOURCES = [
    # (resources, threads, words the message must contain)
    ({"gpu": "two"}, 1, ["rule train: resource gpu='two'", "not a number", "gpu=1"]),
    ({"gpu": -1}, 1, ["resource gpu=-1", "negative", "only rents GPU machines"]),
    ({"gpu": 0}, 1, ["resource gpu=0", "asks for no GPU", "localrules"]),
    ({"nvidia_gpu": 0}, 1, ["resource nvidia_gpu=0", "asks for no GPU"]),
    ({"gpu": 1.5}, 1, ["resource gpu=1.5", "whole number"]),
    ({"gpu": True}, 1, ["resource gpu=True", "not a number"]),
    ({"nvidia_gpu": "x"}, 1, ["resource nvidia_gpu='x'", "not a number"]),
    ({"gpu": 1, "nvidia_gpu": 2}, 1, ["rule train", "gpu=1 and nvidia_gpu=2", "only one"]),
    ({"mem_mb": -5}, 1, ["resource mem_mb=-5", "negative"]),
    ({"mem_mb": "lots"}, 1, ["resource mem_mb='lots'", "not a number", "mem_mb=8000"]),
    ({"mem_mb": "8G"}, 1, ["resource mem_mb='8G'", "megabytes", "mem='8GB'"]),
    ({"disk_mb": -1}, 1, ["resource disk_mb=-1", "negative"]),
    ({"disk_mb": "100 GB"}, 1, ["resource disk_mb='100 GB'", "disk='50GB'"]),
    ({"disk_mb": float("nan")}, 1, ["resource disk_mb=nan", "not a number"]),
    ({}, -2, ["rule train: threads=-2", "at least 1"]),
    ({}, "many", ["rule train: threads='many'", "not a number"]),
    ({}, 2.5, ["rule train: threads=2.5", "whole number"]),
    ({"gpu_model": "RTX_4090;rm"}, 1, ["resource gpu_model='RTX_4090;rm'", "characters"]),
    ({"gpu_model": 'RTX 4090"'}, 1, ["resource gpu_model", "characters", "RTX_4090"]),
    ({"gpu_model": "RTX_4090,RTX_3090"}, 1, ["resource gpu_model", "gpu_name in ["]),
    ({"gpu_model": "gpu_name=H100"}, 1, ["resource gpu_model", "characters"]),
    ({"gpu_model": ""}, 1, ["resource gpu_model=''", "GPU model name"]),
    ({"gpu_model": 4090}, 1, ["resource gpu_model=4090", "e.g. RTX_4090"]),
    ({"vastai_query": "cuda_vers=>12"}, 1, ["resource vastai_query='cuda_vers=>12'", "operator"]),
    ({"vastai_query": "cuda_vers>="}, 1, ["resource vastai_query", "no value"]),
    ({"vastai_query": "cuda_vers>=12 ,"}, 1, ["resource vastai_query", "`field op value`"]),
    ({"vastai_query": "cuda_version>=12"}, 1, ["resource vastai_query", "unknown offer field",
                                               "'cuda_version'", "did you mean cuda_vers"]),
    ({"vastai_query": "num_gpus=two"}, 1, ["resource vastai_query", "num_gpus", "a number"]),
    ({"vastai_query": "verified=yes"}, 1, ["resource vastai_query", "true or false"]),
    ({"vastai_query": "cpu_ram>=lots"}, 1, ["resource vastai_query", "number"]),
    ({"vastai_query": "gpu_name>any"}, 1, ["resource vastai_query", "only with ="]),
    ({"vastai_query": "driver_version>=535.x"}, 1, ["resource vastai_query", "535.86.05"]),
    ({"vastai_query": "geolocation=EU georegion=true"}, 1, ["resource vastai_query",
                                                            "--vastai-geolocation EU"]),
    ({"vastai_query": 42}, 1, ["resource vastai_query=42", "string"]),
]  # fmt: skip


@pytest.mark.parametrize(("resources", "threads", "words"), BAD_RESOURCES)
def test_bad_job_resources_name_the_rule_and_resource(resources, threads, words, capsys):
    with pytest.raises(ConfigError) as caught:
        validate_job_resources("train", resources, threads)
    for word in words:
        assert word in str(caught.value)
    assert capsys.readouterr() == ("", "")  # the SDK's parser printed nothing


@pytest.mark.parametrize(("resources", "threads", "words"), BAD_RESOURCES)
def test_the_offer_search_refuses_the_same_resources(resources, threads, words):
    with pytest.raises(ConfigError) as early:
        validate_job_resources("train", resources, threads)
    with pytest.raises(ConfigError) as late:
        build_offer_request(OfferSettings(), resources, threads, rule="train")
    assert str(late.value) == str(early.value)


# -- bad settings ----------------------------------------------------------------------
BAD_SETTINGS = [
    # (override, words the message must contain)
    ({"geolocation": "EUR"}, ["--vastai-geolocation='EUR'", "region shortcut", "PL,DE,CZ"]),
    ({"geolocation": "PL,DEU"}, ["--vastai-geolocation='PL,DEU'", "'DEU'"]),
    ({"geolocation": "PL,,DE"}, ["--vastai-geolocation='PL,,DE': an empty entry is a"]),
    ({"geolocation": "P1"}, ["--vastai-geolocation='P1'", "ISO country code"]),
    ({"geolocation": "PL;DE"}, ["--vastai-geolocation='PL;DE'"]),
    ({"geolocation": 48}, ["--vastai-geolocation=48"]),
    ({"search_query": "cuda_vers>=12.4 ,"}, ["--vastai-search-query", "not a valid vastai query"]),
    ({"search_query": "foo=1"}, ["--vastai-search-query='foo=1'", "unknown offer field 'foo'"]),
    ({"search_query": "a b c"}, ["--vastai-search-query", "operator"]),
    ({"image": ""}, ["--vastai-image=''", "empty"]),
    ({"image": "vastai/py torch"}, ["--vastai-image", "whitespace"]),
    ({"image": "Vastai/PyTorch:latest"}, ["--vastai-image", "must be lowercase", "'Vastai'"]),
    ({"image": "vastai/pytorch:-bad"}, ["--vastai-image", "tag '-bad'"]),
    ({"image": "vastai/pytorch:"}, ["--vastai-image", "tag ''"]),
    ({"image": "vastai/pytorch:" + "x" * 129}, ["--vastai-image", "128"]),
    ({"image": "vastai/pytorch@sha256:xyz"}, ["--vastai-image", "digest", "sha256:"]),
    ({"image": "vastai/pytorch@vastai-automatic-tag"}, ["--vastai-image", "digest"]),
    ({"image": "vastai//pytorch"}, ["--vastai-image", "empty path component"]),
    ({"image": "registry..example.com/x/y"}, ["--vastai-image", "registry"]),
    ({"image": "my_image!"}, ["--vastai-image", "'my_image!'", "repository name"]),
    ({"disk": 0}, ["--vastai-disk=0", "greater than 0"]),
    ({"disk": -5}, ["--vastai-disk=-5", "greater than 0"]),
    ({"disk": "big"}, ["--vastai-disk='big'", "not a number"]),
    ({"reliability": 1.5}, ["--vastai-reliability=1.5", "between 0 and 1"]),
    ({"reliability": -0.1}, ["--vastai-reliability=-0.1", "between 0 and 1"]),
    ({"max_price": 0}, ["--vastai-max-price=0", "greater than 0"]),
    ({"max_price": -1.0}, ["--vastai-max-price=-1.0", "greater than 0"]),
    ({"max_price": "cheap"}, ["--vastai-max-price='cheap'", "not a number"]),
    ({"boot_timeout": 0}, ["--vastai-boot-timeout=0", "greater than 0"]),
    ({"boot_timeout": -10}, ["--vastai-boot-timeout=-10"]),
    ({"order": "dph_totl"}, ["--vastai-order='dph_totl'", "did you mean dph_total"]),
    ({"order": "price"}, ["--vastai-order='price'", "unknown offer field 'price';", "dph_total"]),
    ({"order": ""}, ["--vastai-order=''", "dph_total"]),
    ({"order": ","}, ["--vastai-order=','", "no field"]),
    ({"gpu_name": "RTX 4090!"}, ["--vastai-gpu-name='RTX 4090!'", "characters"]),
    ({"api_url": "console.vast.ai"}, ["--vastai-api-url='console.vast.ai'", "http(s)"]),
    ({"api_url": "ftp://vast.ai"}, ["--vastai-api-url"]),
    ({"keep_instances": "no"}, ["--vastai-keep-instances='no'", "true or false"]),
    ({"no_datacenter": 1}, ["--vastai-no-datacenter=1"]),
    ({"status_interval": 0}, ["--vastai-status-interval=0"]),
    ({"offline_grace": -1}, ["--vastai-offline-grace=-1", "negative"]),
]  # fmt: skip


@pytest.mark.parametrize(("override", "words"), BAD_SETTINGS)
def test_bad_settings_name_the_option(override, words, capsys):
    with pytest.raises(ConfigError) as caught:
        validate_settings(settings(**override))
    for word in words:
        assert word in str(caught.value)
    assert capsys.readouterr() == ("", "")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# -- good input passes -----------------------------------------------------------------
def test_default_settings_pass():
    validate_settings(settings())


def test_missing_attributes_count_as_unset():
    validate_settings(SimpleNamespace())


def test_every_setting_set_to_something_sensible_passes():
    validate_settings(settings(
        api_url="http://127.0.0.1:8080", gpu_name="H100 SXM", max_price="1.5",
        geolocation="eu,US", disk="80", reliability=0, no_datacenter=True,
        order="dlperf_usd-,dph", search_query="cuda_vers>=12.4 verified=any",
        boot_timeout=600, keep_instances=True, status_interval=5, offline_grace=0,
    ))  # fmt: skip


@pytest.mark.parametrize(
    "resources",
    [{}, {"gpu": 1}, {"gpu": "2"}, {"nvidia_gpu": 8.0}, {"gpu": 2, "nvidia_gpu": 2},
     {"mem_mb": 8000, "disk_mb": 50_000.0, "mem_mib": 7630, "mem": "8GB"},
     {"mem_mb": "16000"}, {"mem_mb": 0}, {"gpu_model": "RTX_PRO_6000_Max-Q"},
     {"gpu_model": "RTX 4090"},
     {"vastai_query": "cuda_vers>=12.4 gpu_name in [RTX_4090,A100_SXM4]"},
     {"vastai_query": ""}, {"tmpdir": "/tmp", "runtime": 60, "_nodes": 1, "_cores": 4}],
)  # fmt: skip
def test_good_resources_pass(resources):
    validate_job_resources("train", resources, 4)


def test_resources_snakemake_has_not_evaluated_yet_are_skipped():
    tbd = pytest.importorskip("snakemake.common.tbdstring").TBDString()
    validate_job_resources("train", {"gpu": tbd, "mem_mb": tbd, "disk_mb": tbd,
                                     "gpu_model": tbd, "vastai_query": tbd}, 1)  # fmt: skip


@pytest.mark.parametrize(
    "image",
    ["vastai/pytorch:@vastai-automatic-tag", "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
     "ubuntu", "ubuntu:22.04", "ghcr.io/org/team/img:v1", "localhost:5000/a/b",
     "registry.example.com:5000/x/img@sha256:" + "a" * 64, "img:TAG_Upper.1",
     "nvidia/cuda:12.4.1-devel-ubuntu22.04", "a__b/c-d--e.f", "docker.io/library/python:3.11"],
)  # fmt: skip
def test_valid_image_references_pass(image):
    assert parse_image_reference(image) == image


def test_image_reference_is_stripped():
    assert parse_image_reference("  ubuntu:22.04\n") == "ubuntu:22.04"


# -- parsers used by offers.py ---------------------------------------------------------
def test_geolocation_regions_and_countries_mix_without_duplicates():
    assert expand_geolocation("NA,us,CA,DE") == ("CA", "US", "DE")
    assert expand_geolocation(None) == ()


def test_our_region_table_is_the_vastai_clis_while_the_sdk_still_has_one():
    """Ours is data of our own (an SDK update may drop its private table); while the SDK
    has it, both must expand a region to the same countries."""
    utils = pytest.importorskip("vastai.utils")
    sdk = getattr(utils, "_regions", None)
    if not isinstance(sdk, dict):
        pytest.skip("this vastai SDK has no region table of its own any more")
    assert {k: v.split(",") for k, v in sdk.items()} == {
        k: v.split(",") for k, v in REGION_COUNTRIES.items()}


def test_the_package_imports_no_private_name_of_another_package():
    package = Path(validation_module.__file__).parents[1]
    private = re.compile(r"^\s*from\s+(?!\.)(\S+)\s+import\s+.*\b_[a-z]", re.MULTILINE)
    found = [f"{path.relative_to(package)}: {m.group(0).strip()}"
             for path in package.rglob("*.py") for m in private.finditer(path.read_text())]
    assert found == []


def test_parse_filters_types_values_and_leaves_base_untouched():
    base = {"reliability": {"gte": 0.98}}
    parsed = parse_filters("reliability>0.9 num_gpus in [1,2] rentable=True", "x", base)
    assert parsed == {"reliability": {"gte": 0.98, "gt": 0.9}, "num_gpus": {"in": [1, 2]},
                      "rentable": {"eq": True}}  # fmt: skip
    assert base == {"reliability": {"gte": 0.98}}


def test_parse_filters_keeps_strings_for_text_fields():
    parsed = parse_filters('gpu_name in ["RTX 4090",RTX_3090] ubuntu_version=22.04', "x")
    assert parsed == {"gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
                      "ubuntu_version": {"eq": "22.04"}}  # fmt: skip


def test_driver_versions_are_encoded_like_the_sdk_does_without_printing(capsys):
    assert parse_filters("driver_version>=535.86.05", "x") == {"driver_version": {"gte": 535086005}}
    assert parse_filters("driver_version=any", "x", {"driver_version": {"gte": 1}}) == {}
    assert capsys.readouterr() == ("", "")


def test_parse_order_aliases():
    assert parse_order("dph-,flops_usd") == [["dph_total", "desc"],
                                             ["flops_per_dphtotal", "asc"]]  # fmt: skip
