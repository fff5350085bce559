"""Per-rule settings as resources: precedence over the global options, validation that
names the rule and resource, the container directive as image, runtime as a cap."""

from __future__ import annotations

import pytest

from snakemake_executor_plugin_vastai.vastai.offers import OfferSettings, build_offer_request
from snakemake_executor_plugin_vastai.workflow.rule_settings import (
    container_image,
    job_settings,
    runtime_cap_origin,
    validate_rule_settings,
)
from snakemake_executor_plugin_vastai.workflow.validation import ConfigError

GLOBAL = OfferSettings(max_price=2.0, disk_gb=40, geolocation="NA", reliability=0.98)


def settings(resources: dict, container: object = None, max_runtime: float = 0.0):
    return job_settings(image="global/image:1", max_runtime=max_runtime, offer=GLOBAL,
                        resources=resources, rule="train", container_url=container)


def test_without_overrides_the_global_settings_apply():
    s = settings({})
    assert (s.image, s.max_runtime, s.offer) == ("global/image:1", 0.0, GLOBAL)


def test_each_resource_overrides_its_global_option_in_the_offer_search():
    s = settings({"vastai_max_price": "0.5", "vastai_disk": 80, "vastai_geolocation": "PL,DE",
                  "vastai_reliability": "0.995"})
    query = build_offer_request(s.offer, {}, 1, rule="train").query
    assert query["dph_total"] == {"lte": 0.5}
    assert query["disk_space"] == {"gte": 80.0}
    assert query["geolocation"] == {"in": ["PL", "DE"]}
    assert query["reliability"] == {"gte": 0.995}


def test_the_image_comes_from_vastai_image_then_the_container_then_the_option():
    assert settings({}, "docker://python:3.12-slim").image == "python:3.12-slim"
    assert settings({"vastai_image": "org/own:2"}, "docker://python:3.12").image == "org/own:2"


@pytest.mark.parametrize("url", ["shub://x/y", "library://a/b/c", "images/local.sif"])
def test_a_container_vastai_cannot_run_is_refused_naming_the_rule(url):
    with pytest.raises(ConfigError, match=r"rule train: container .* Docker"):
        container_image(url, "train")


def test_runtime_minutes_cap_only_when_no_explicit_cap_is_set():
    assert settings({"runtime": 2}).max_runtime == 120
    assert settings({"runtime": 2}, max_runtime=30).max_runtime == 30
    assert settings({"runtime": 2, "vastai_max_runtime": 10}, max_runtime=30).max_runtime == 10
    assert settings({"vastai_max_runtime": 0}, max_runtime=30).max_runtime == 0


def test_the_cap_says_where_it_comes_from():
    assert runtime_cap_origin(30, {"vastai_max_runtime": 5}) == \
        "the rule's vastai_max_runtime resource"
    assert runtime_cap_origin(30, {"runtime": 2}) == "--vastai-max-runtime"
    assert runtime_cap_origin(0, {"runtime": 2}) == "the rule's runtime resource"


@pytest.mark.parametrize(("resources", "culprit"), [
    ({"vastai_max_price": "cheap"}, "rule train: resource vastai_max_price"),
    ({"vastai_max_price": 0}, "rule train: resource vastai_max_price"),
    ({"vastai_disk": -5}, "rule train: resource vastai_disk"),
    ({"vastai_geolocation": "ATLANTIS"}, "rule train: resource vastai_geolocation"),
    ({"vastai_reliability": "1.5"}, "rule train: resource vastai_reliability"),
    ({"vastai_image": "Not An Image"}, "rule train: resource vastai_image"),
    ({"vastai_max_runtime": -1}, "rule train: resource vastai_max_runtime"),
    ({"runtime": "soon"}, "rule train: resource runtime"),
])
def test_bad_values_name_the_rule_and_resource(resources, culprit):
    with pytest.raises(ConfigError) as err:
        validate_rule_settings("train", resources)
    assert culprit in str(err.value)


def test_pending_values_are_left_for_later():
    validate_rule_settings("train", {"vastai_disk": "<TBD>", "runtime": "<TBD>"})
