"""Early checks on settings and job resources, before anything is rented.

A typo found after an instance is running costs money and a wasted boot, so
everything the user typed is checked once, at startup. The same functions
also turn that input into clean values for :mod:`.offers`. That way the
startup check and the offer search accept exactly the same input.

Each error is a :class:`ConfigError`. Its message names the culprit (the
option, or the rule and resource), shows the bad value and says what to write
instead.

Query strings go through the vastai SDK's own parser, so ``--vastai-search-query``
and the ``vastai_query`` resource use the same syntax as ``vastai search
offers``. The SDK prints a warning for unknown fields and, for a malformed
``driver_version``, a message on stdout. It is called here in a way that
prints nothing: those cases become errors instead.

Snakemake hands resources over as ints, floats or strings. Numeric strings
("2", "8000") are accepted. A size with a unit in a ``*_mb`` resource
(``mem_mb="8G"``) is rejected: Snakemake converts only ``mem``/``disk`` to
megabytes, so it is unclear whether "8G" means GB or GiB, and Snakemake's
scheduler would not count it. The message suggests ``mem_mb=8000`` or
``mem="8GB"``. Resources that Snakemake has not evaluated yet (``<TBD>``,
when a value depends on input files that do not exist yet) are skipped here.
They are checked again when the offer request is built.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from vastai.api import query as sdk_query

QUERY_EXAMPLE = "e.g. 'cuda_vers>=12.4 inet_down>=500'"
VAST_AUTO_TAG = "@vastai-automatic-tag"


class ConfigError(ValueError):
    """Bad user input, found before any money is spent.

    The message names the culprit: an option like ``--vastai-geolocation``,
    or a rule and one of its resources.
    """


# -- naming the culprit ----------------------------------------------------------------
def option(name: str) -> str:
    """The command-line spelling of an executor setting, for error messages."""
    return "--vastai-" + name.replace("_", "-")


def resource(rule: str, name: str) -> str:
    return f"rule {rule}: resource {name}"


def is_pending(value: object) -> bool:
    """True for Snakemake's "<TBD>" placeholder of a resource it has not evaluated yet."""
    return type(value).__name__ == "TBDString" or value == "<TBD>"


# -- numbers ---------------------------------------------------------------------------
def to_number(value: object, culprit: str, hint: str = "") -> float:
    """A finite number from an int, float or numeric string.

    Booleans are refused: ``gpu=True`` is more likely a mistake than a count.
    """
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{culprit}={value!r} is not a number{_then(hint)}")
    return number


def positive(value: object, culprit: str, hint: str = "") -> float:
    number = to_number(value, culprit, hint)
    if number <= 0:
        raise ConfigError(f"{culprit}={value!r} must be greater than 0{_then(hint)}")
    return number


def whole(value: object, culprit: str, minimum: int | None, hint: str = "") -> int:
    """A whole number of at least ``minimum`` (2.0 is fine, 2.5 is not)."""
    number = to_number(value, culprit, hint)
    if not number.is_integer():
        raise ConfigError(f"{culprit}={value!r} must be a whole number{_then(hint)}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{culprit}={value!r} must be at least {minimum}{_then(hint)}")
    return int(number)


def fraction(value: object, culprit: str, hint: str = "") -> float:
    number = to_number(value, culprit, hint)
    if not 0 <= number <= 1:
        raise ConfigError(f"{culprit}={value!r} must be between 0 and 1{_then(hint)}")
    return number


def flag(value: object, culprit: str) -> bool:
    """Refuse a non-boolean flag: the string "no" would otherwise count as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{culprit}={value!r} must be true or false")
    return value


def _then(hint: str) -> str:
    return f"; {hint}" if hint else ""


# -- job resources ---------------------------------------------------------------------
GPU_HINT = "give the number of GPUs to rent, e.g. gpu=1"
NO_GPU_HINT = (
    "Vast.ai only rents GPU machines: ask for 1 or more (1 is the default), or run the "
    "rule on this machine with `localrules:`"
)


def gpu_count(resources: Mapping[str, object], rule: str) -> int:
    """GPUs to rent, from ``gpu`` or ``nvidia_gpu``. The default is 1.

    Zero is refused rather than rounded up: a rule that says ``gpu=0`` means
    "no GPU", and renting one anyway would be paying for the wrong thing.
    """
    counts: dict[str, int] = {}
    for name in ("gpu", "nvidia_gpu"):
        value = resources.get(name)
        if value is None or is_pending(value):
            continue
        count = whole(value, resource(rule, name), None, GPU_HINT)
        if count < 1:
            problem = "asks for no GPU" if count == 0 else "is negative"
            raise ConfigError(f"{resource(rule, name)}={value!r} {problem}; {NO_GPU_HINT}")
        counts[name] = count
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"rule {rule}: resources gpu={counts['gpu']} and nvidia_gpu={counts['nvidia_gpu']} "
            "disagree; set only one of them"
        )
    return next(iter(counts.values()), 1)


def thread_count(threads: object, rule: str) -> int:
    return whole(threads, f"rule {rule}: threads", 1, "threads become cpu_cores_effective>=N")


_SIZE_EXAMPLES = {"mem_mb": 8, "disk_mb": 50}  # GB, for the hints
_SIZE_WITH_UNIT = re.compile(r"^\s*[0-9.]+\s*[A-Za-z]+\s*$")


def megabytes(resources: Mapping[str, object], name: str, rule: str) -> float | None:
    """A size resource such as ``mem_mb`` in MB (10**6 bytes, as in Snakemake), or None.

    Zero means "no minimum" and is kept. A unit in the value is refused (see
    the module docstring).
    """
    value = resources.get(name)
    if value is None or is_pending(value):
        return None
    culprit = resource(rule, name)
    plain, example = name.removesuffix("_mb"), _SIZE_EXAMPLES.get(name, 8)
    if isinstance(value, str) and _SIZE_WITH_UNIT.match(value):
        raise ConfigError(
            f"{culprit}={value!r} must be a plain number of megabytes: write "
            f"{name}={example}000, or {plain}='{example}GB' and let Snakemake convert it"
        )
    number = to_number(value, culprit, f"give megabytes, e.g. {name}={example}000")
    if number < 0:
        raise ConfigError(f"{culprit}={value!r} cannot be negative")
    return number


# -- GPU model -------------------------------------------------------------------------
_GPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def gpu_model(value: object, culprit: str) -> str:
    """A GPU model in Vast.ai naming (``RTX_4090``, ``H100_SXM``).

    Spaces become underscores, as in the vastai CLI. Characters that would
    change the meaning of the query (quotes, brackets, commas, operators) are
    refused, so a model name can never inject extra filters.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{culprit}={value!r} must be a GPU model name in Vast.ai naming, e.g. RTX_4090"
        )
    name = "_".join(value.split())
    if not _GPU_MODEL.match(name):
        raise ConfigError(
            f"{culprit}={value!r} has characters a GPU model cannot have; use Vast.ai "
            "naming with underscores for spaces, e.g. RTX_4090 or H100_SXM (for several "
            "models use a query: gpu_name in [RTX_4090,RTX_3090])"
        )
    return name


# -- geolocation -----------------------------------------------------------------------
# The vastai CLI's region shortcuts (``vastai search offers 'geolocation in EU'`` with
# ``georegion=true``), copied as data from vastai 1.9.1 so a region means here what it
# means there, quirks included (AR and AU under AS, SUR and VZ, which are not ISO codes).
# The SDK keeps its table private; tests/unit/workflow/test_validation.py compares it
# with this one while the SDK still has it.
REGION_COUNTRIES: Mapping[str, str] = MappingProxyType({
    "AF": "DZ,AO,BJ,BW,BF,BI,CM,CV,CF,TD,KM,CD,CG,DJ,EG,GQ,ER,ET,GA,GM,GH,GN,GW,KE,LS,LR,LY,"
          "MW,MA,ML,MR,MU,MZ,NA,NE,NG,RW,SH,ST,SN,SC,SL,SO,ZA,SS,SD,SZ,TZ,TG,TN,UG,YE,ZM,ZW",
    "AS": "AE,AM,AR,AU,AZ,BD,BH,BN,BT,MM,KH,KP,IN,ID,IR,IQ,IL,JP,JO,KZ,LV,LI,MY,MV,MN,NP,KR,"
          "PK,PH,QA,SA,SG,LK,SY,TW,TJ,TH,TR,TM,VN,YE,HK,CN,OM",
    "EU": "AL,AD,AT,BY,BE,BA,BG,HR,CY,CZ,DK,EE,FI,FR,GE,DE,GR,HU,IS,IT,KZ,LV,LI,LT,LU,MT,MD,"
          "MC,ME,NL,NO,PL,PT,RO,RU,RS,SK,SI,ES,SE,CH,UA,GB,VA,MK",
    "LC": "AG,AR,BS,BB,BZ,BO,BR,CL,CO,CR,CU,DO,EC,SV,GY,HT,HN,JM,MX,NI,PA,PY,PE,PR,RD,SUR,TT,"
          "UR,VZ",
    "NA": "CA,US",
    "OC": "AU,FJ,GU,KI,MH,FM,NR,NZ,PG,PW,SL,TO,TV,VU",
})


def _region_table(raw: Mapping[str, str]) -> Mapping[str, tuple[str, ...]]:
    table = {}
    for region, countries in raw.items():
        codes = (code.strip().upper() for code in countries.split(","))
        table[region.upper()] = tuple(dict.fromkeys(code for code in codes if code))
    return MappingProxyType(table)


REGIONS: Mapping[str, tuple[str, ...]] = _region_table(REGION_COUNTRIES)
"""Region shortcut -> country codes, as the vastai CLI expands them."""

_COUNTRY = re.compile(r"^[A-Z]{2}$")


def expand_geolocation(value: object, culprit: str = option("geolocation")) -> tuple[str, ...]:
    """Country codes for a region shortcut or a comma-separated code list.

    Items are case-insensitive and regions may be mixed with countries
    ("EU,US"). A shortcut always means the region, so NA is North America,
    not Namibia. Empty for None or a blank string (no filter).
    """
    if value is None:
        return ()
    if not isinstance(value, str):
        raise ConfigError(f"{culprit}={value!r} must be a region or country codes, e.g. EU")
    if not value.strip():
        return ()
    codes: list[str] = []
    for item in (part.strip().upper() for part in value.split(",")):
        if item in REGIONS:
            codes.extend(REGIONS[item])
        elif _COUNTRY.match(item):
            codes.append(item)
        else:
            problem = f"{item!r} is neither" if item else "an empty entry is"
            raise ConfigError(
                f"{culprit}={value!r}: {problem} a region shortcut ({', '.join(REGIONS)}) "
                "nor a two-letter ISO country code; write e.g. EU or PL,DE,CZ"
            )
    return tuple(dict.fromkeys(codes))


# -- vastai query syntax ---------------------------------------------------------------
def _sdk_columns() -> set[str]:
    """Offer columns the SDK's typed query module knows (incl. server-side virtual ones)."""
    try:
        from vastai.data import query as typed
    except ImportError:
        return set()
    return {v.name for v in vars(typed).values() if isinstance(v, typed.Column)}


KNOWN_FIELDS = frozenset(
    sdk_query.offers_fields | set(sdk_query.offers_alias.values()) | _sdk_columns()
)
"""Offer fields a query may filter or order on (after the SDK's aliases)."""

NUMERIC_FIELDS = frozenset({
    "bw_nvlink", "cluster_id", "compute_cap", "cpu_cores", "cpu_cores_effective", "cpu_ghz",
    "cpu_ram", "cuda_max_good", "direct_port_count", "disk_bw", "disk_space", "dlperf",
    "dlperf_per_dphtotal", "dph_total", "duration", "flops_per_dphtotal", "gpu_frac",
    "gpu_max_power", "gpu_max_temp", "gpu_mem_bw", "gpu_ram", "gpu_total_ram", "host_id", "id",
    "inet_down", "inet_down_cost", "inet_up", "inet_up_cost", "machine_id", "min_bid",
    "num_gpus", "pci_gen", "pcie_bw", "reliability", "score", "storage_cost", "total_flops",
})  # fmt: skip
"""Fields whose values must be numbers; they are sent as JSON numbers, not strings."""

BOOL_FIELDS = frozenset({
    "datacenter", "external", "gpu_display_active", "has_avx", "rentable", "rented",
    "static_ip", "verified", "vms_enabled",
})  # fmt: skip

# driver_version is renamed for the SDK's parser so that it does not run its own
# version conversion, which prints to stdout on a malformed version.
_RAW_DRIVER = "driver_version (unconverted)"
_ALIASES = {**sdk_query.offers_alias, "driver_version": _RAW_DRIVER}
_DIRECTIVE_HINT = {
    "georegion": "use --vastai-geolocation EU (region shortcuts are expanded there)",
    "chunked": "chunked=true is a vastai CLI display option, not a filter",
}
_SDK_REASONS = (
    ("Unconsumed text", "part of it is not a `field op value` filter"),
    ("Unknown operator", "an operator is missing or unknown (use = != < <= > >= in notin)"),
    ("Value cannot be blank", "a filter has no value"),
    ("Field cannot be blank", "a filter has no field"),
    ("Wildcard only", "any/*/? works only with =, e.g. gpu_name=any"),
    ("could not convert", "a number was expected"),
)


class _FieldRecorder:
    """Stands in for the SDK's field set: accepts every field, so the SDK prints no
    warning, and remembers each one so unknown fields can become errors."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __contains__(self, field: object) -> bool:
        self.seen.append(str(field))
        return True


def parse_filters(text: object, culprit: str, base: Mapping[str, Mapping] | None = None) -> dict:
    """Parse a vastai query string onto a copy of ``base``, as ``vastai search offers`` does.

    As in the CLI, a filter on a field that ``base`` already has replaces the
    same operator, and ``field=any`` removes the field. Numeric and boolean
    values are typed; unknown fields and malformed text raise ConfigError.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{culprit}={text!r} must be a string in vastai query syntax")
    result = {field: dict(ops) for field, ops in (base or {}).items()}
    if "driver_version" in result:
        result[_RAW_DRIVER] = result.pop("driver_version")
    recorder = _FieldRecorder()
    try:
        sdk_query.parse_query(text, result, recorder, _ALIASES, sdk_query.offers_mult)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{culprit}={text!r} is not a valid vastai query: {_reason(exc)}; "
            f"write filters as `field op value`, {QUERY_EXAMPLE}"
        ) from None
    _refuse_unknown_fields(recorder.seen, text, culprit)
    if _RAW_DRIVER in result:
        result["driver_version"] = _driver_versions(result.pop(_RAW_DRIVER), text, culprit)
    return {field: _typed_ops(field, ops, text, culprit) for field, ops in result.items()}


def _reason(exc: Exception) -> str:
    message = str(exc)
    for start, reason in _SDK_REASONS:
        if message.startswith(start):
            return reason
    return message


def _did_you_mean(field: str) -> str:
    close = difflib.get_close_matches(field, KNOWN_FIELDS | set(sdk_query.offers_alias), 1, 0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _refuse_unknown_fields(seen: list[str], text: str, culprit: str) -> None:
    for field in seen:
        name = "driver_version" if field == _RAW_DRIVER else field
        if name in KNOWN_FIELDS:
            continue
        if name in _DIRECTIVE_HINT:
            raise ConfigError(f"{culprit}={text!r}: {_DIRECTIVE_HINT[name]}")
        raise ConfigError(
            f"{culprit}={text!r}: unknown offer field {name!r}{_did_you_mean(name)}; "
            "`vastai search offers --help` lists the fields"
        )


def _typed_ops(field: str, ops: Mapping[str, Any], text: str, culprit: str) -> dict:
    if field in NUMERIC_FIELDS:
        convert = _number_value
    elif field in BOOL_FIELDS:
        convert = _bool_value
    else:
        return dict(ops)
    typed = {}
    for op, value in ops.items():
        try:
            typed[op] = [convert(v) for v in value] if isinstance(value, list) else convert(value)
        except ValueError:
            kind = "a number" if convert is _number_value else "true or false"
            raise ConfigError(
                f"{culprit}={text!r}: {field} {op} {value!r} needs {kind}; {QUERY_EXAMPLE}"
            ) from None
    return typed


def _number_value(value: Any) -> Any:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    try:
        return int(value)
    except ValueError:
        number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _bool_value(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(value)


_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def _driver_versions(ops: Mapping[str, Any], text: str, culprit: str) -> dict:
    """Driver versions as the SDK encodes them (535.86.05 -> 535086005), without its print."""

    def encode(value: Any) -> Any:
        if not isinstance(value, str) or "." not in value:
            return value
        match = _VERSION.match(value)
        if not match:
            raise ConfigError(
                f"{culprit}={text!r}: driver_version {value!r} must look like 535.86.05"
            )
        return int("".join(part.zfill(3) for part in match.groups()))

    return {
        op: [encode(v) for v in value] if isinstance(value, list) else encode(value)
        for op, value in ops.items()
    }


def parse_order(text: object, culprit: str = option("order")) -> list[list[str]]:
    """``[[field, "asc"|"desc"], ...]`` from vastai order syntax ("dlperf_usd-,dph")."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"{culprit}={text!r} must name an offer field to sort by, e.g. "
            "dph_total (cheapest first) or dlperf_usd- (most perf per $ first)"
        )
    order = sdk_query.parse_order(text, sdk_query.offers_alias)
    for field, _direction in order:
        if field not in KNOWN_FIELDS:
            raise ConfigError(
                f"{culprit}={text!r}: unknown offer field {field!r}{_did_you_mean(field)}; "
                "sort by e.g. dph_total (the $/h price) or dlperf_usd- (a trailing - is "
                "descending)"
            )
    if not order:
        raise ConfigError(f"{culprit}={text!r} names no field to sort by, e.g. dph_total")
    return order


# -- docker image ----------------------------------------------------------------------
_HOST = re.compile(
    r"^(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]+)?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")


def parse_image_reference(image: object, culprit: str = option("image")) -> str:
    """The image reference, checked against Docker's grammar. Returns it stripped.

    Also accepts Vast.ai's ``repo:@vastai-automatic-tag``, which tells the host
    to pick the image tag that matches its CUDA driver. A bad reference only
    shows up as a failed pull minutes after renting, so it is refused here.
    """
    if not isinstance(image, str) or not image.strip():
        raise ConfigError(
            f"{culprit}={image!r} is empty; give a Docker image, e.g. "
            "vastai/pytorch:@vastai-automatic-tag"
        )
    ref = image.strip()
    if any(ch.isspace() for ch in ref):
        raise ConfigError(
            f"{culprit}={image!r} contains whitespace; an image reference is "
            "one word like registry/repo:tag"
        )
    name, tag, digest = _split_reference(ref, culprit)
    if tag is not None and tag != VAST_AUTO_TAG and not _TAG.match(tag):
        raise ConfigError(
            f"{culprit}={image!r}: tag {tag!r} is not valid (letters, digits, "
            "_ . - and at most 128 characters, not starting with . or -)"
        )
    if digest is not None and not _DIGEST.match(digest):
        raise ConfigError(
            f"{culprit}={image!r}: digest {digest!r} is not valid, expected sha256:<64 hex digits>"
        )
    _check_name(name, image, culprit)
    return ref


def _split_reference(ref: str, culprit: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; tag/digest None when absent."""
    if ref.endswith(":" + VAST_AUTO_TAG):
        return ref[: -len(VAST_AUTO_TAG) - 1], VAST_AUTO_TAG, None
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        ref, tag = ref[:colon], ref[colon + 1 :]
    return ref, tag, digest


def _check_name(name: str, image: str, culprit: str) -> None:
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise ConfigError(f"{culprit}={image!r}: registry {first!r} is not a valid host[:port]")
        parts = parts[1:]
    for part in parts:
        if _PATH_COMPONENT.match(part):
            continue
        if not part:
            raise ConfigError(
                f"{culprit}={image!r} has an empty path component (// or a leading or trailing /)"
            )
        if _PATH_COMPONENT.match(part.lower()):
            raise ConfigError(
                f"{culprit}={image!r}: repository names must be lowercase "
                f"({part!r}); only the tag may have capitals"
            )
        raise ConfigError(
            f"{culprit}={image!r}: {part!r} is not a valid repository name "
            "(lowercase letters, digits and . _ - separators)"
        )


# -- deploy paths ----------------------------------------------------------------------
DEPLOY_EXAMPLE = "e.g. 'train.py,scripts/**'"


def deploy_patterns(value: object, culprit: str) -> tuple[str, ...]:
    """The paths/globs of ``--vastai-deploy-paths`` or a ``deploy`` resource.

    Comma-separated, relative to the working directory; blanks between commas are
    ignored and a leading ``./`` is dropped. A pattern that climbs out of the
    working directory (``..``) or is absolute can never match a shipped source
    file (Snakemake ships only files below the working directory), so it is refused.
    Which files each pattern selects is :mod:`.deploy`'s business.
    """
    if not isinstance(value, str):
        raise ConfigError(
            f"{culprit}={value!r} must be a string of comma-separated paths or globs, "
            f"{DEPLOY_EXAMPLE}"
        )
    patterns: list[str] = []
    for raw in value.split(","):
        pattern = raw.strip()
        while pattern.startswith("./"):
            pattern = pattern[2:]
        if not pattern:
            continue
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise ConfigError(
                f"{culprit}={value!r}: {raw.strip()!r} points outside the working "
                "directory; only files below it are shipped, so give paths relative "
                f"to it, {DEPLOY_EXAMPLE}"
            )
        patterns.append(pattern)
    return tuple(dict.fromkeys(patterns))


# -- the two entry points --------------------------------------------------------------
def validate_settings(settings: Any) -> None:
    """Check every executor setting; raise ConfigError naming the first bad option.

    ``settings`` is any object with the executor settings as attributes; a
    missing attribute counts as unset, so the settings class can grow.
    """

    def get(name: str, default: Any = None) -> Any:
        return getattr(settings, name, default)

    _check_api_url(get("api_url"))
    if get("gpu_name") is not None:
        gpu_model(get("gpu_name"), option("gpu_name"))
    if get("max_price") is not None:
        positive(get("max_price"), option("max_price"), "the highest $/h per instance, e.g. 1.0")
    expand_geolocation(get("geolocation"))
    positive(get("disk", 40), option("disk"), "the disk to rent per instance in GB, e.g. 40")
    if get("image") is not None:
        parse_image_reference(get("image"))
    fraction(get("reliability", 0.98), option("reliability"), "0 turns the filter off")
    parse_order(get("order", "dph_total"))
    if get("search_query") is not None:
        parse_filters(get("search_query"), option("search_query"))
    positive(get("boot_timeout", 1800), option("boot_timeout"), "seconds, e.g. 1800")
    if get("status_interval") is not None:
        positive(get("status_interval"), option("status_interval"), "seconds, e.g. 5")
    if (
        get("offline_grace") is not None
        and to_number(get("offline_grace"), option("offline_grace")) < 0
    ):
        raise ConfigError(f"{option('offline_grace')}={get('offline_grace')!r} cannot be negative")
    for name in ("no_datacenter", "no_forward_credentials", "keep_instances"):
        flag(get(name, False), option(name))
    if get("deploy_paths") is not None:
        deploy_patterns(get("deploy_paths"), option("deploy_paths"))


def _check_api_url(url: object) -> None:
    if url is None:
        return
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{option('api_url')}={url!r} must be an http(s) URL, e.g. "
            "https://console.vast.ai or http://127.0.0.1:8080 for the simulator"
        )


def validate_job_resources(rule: str, resources: Mapping[str, object], threads: object) -> None:
    """Check one job's resources; raise ConfigError naming the rule and resource."""
    gpu_count(resources, rule)
    model = resources.get("gpu_model")
    if model is not None and not is_pending(model):
        gpu_model(model, resource(rule, "gpu_model"))
    thread_count(threads, rule)
    megabytes(resources, "mem_mb", rule)
    megabytes(resources, "disk_mb", rule)
    extra = resources.get("vastai_query")
    if extra is not None and not is_pending(extra):
        parse_filters(extra, resource(rule, "vastai_query"))
    deploy = resources.get("deploy")
    if deploy is not None and not is_pending(deploy):
        deploy_patterns(deploy, resource(rule, "deploy"))
