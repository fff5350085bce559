"""A job's identity across runs: what decides its result, as named parts.

After a crash, a job Snakemake runs again is re-attached to the instance an
earlier run rented for it only if nothing that determines its result changed.
Getting this wrong returns the old code's output as a success, so the parts
cover (each a short hash, so the journal can say *what* changed):

``identity``  rule and outputs: which job this is (never compared for reuse alone)
``command``   the formatted shell command (``shell:``), or the wrapper name
``code``      the content of the ``script:``/``notebook:`` file (its path formatted with
              the job's wildcards), or the ``run:`` block's compiled code plus the
              content of every Snakefile the workflow included (helpers it calls)
``sources``   the content of every source file the run ships to the instance (the
              archive's files: the Snakefile and includes, config files, scripts, every
              git-tracked file), so a ``shell:`` rule running ``python train.py`` does not
              re-attach to an instance still running the old ``train.py``
``config``    the workflow's config (config files and ``--config`` overrides), which
              scripts read through ``snakemake.config``
``params``    the job's params
``resources`` every resource and the thread count (they shape the machine rented)
``software``  the conda environment file's content, the container image, the
              instance image of this run
``inputs``    each input's path, size, modification time, change time and inode
              (ctime changes on every write and cannot be set back by ``touch``)
``protocol``  the plugin's remote protocol version (how the job runs on the host)

Group jobs combine the parts of their members. Not covered: files the job reads that
are neither declared inputs nor shipped sources (an untracked module, a file on the
instance image; rerun without resuming: ``--vastai-on-restart destroy``) and named conda
environments (only their name counts).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Bump when what runs on the instance changes in a way an old job directory would not
# match (transports/ssh/scripts.py layout, wrapper behaviour).
REMOTE_PROTOCOL = "2"
VOLATILE_RESOURCES = frozenset({"_cores", "_nodes", "tmpdir"})
PART_NAMES = ("identity", "command", "code", "config", "params", "resources", "software",
              "inputs", "sources", "protocol")
READABLE = {
    "identity": "rule or outputs", "command": "shell command", "code": "script or run: code",
    "sources": "shipped source files", "config": "config",
    "params": "params", "resources": "resources", "software": "software environment",
    "inputs": "input files", "protocol": "plugin protocol version",
}


def _digest(value: Any, length: int = 16) -> str:
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def combine(parts: dict[str, str]) -> str:
    """The fingerprint: one hash over all parts."""
    return _digest([parts.get(name) for name in PART_NAMES], length=32)


def job_parts(job: Any, workdir: Path, image: str) -> dict[str, str]:
    """The named parts of a Snakemake job (group jobs: their members, in order)."""
    members = list(job.jobs) if job.is_group() else [job]
    facts = [_member_facts(m, workdir, image) for m in sorted(members, key=_member_key)]
    parts = {name: _digest([f[name] for f in facts]) for name in PART_NAMES
             if name != "sources"}
    parts["sources"] = shipped_sources_digest(getattr(members[0].rule, "workflow", None),
                                              workdir)
    return {name: parts[name] for name in PART_NAMES}


_SHIPPED: list[tuple[Any, str]] = []  # (workflow, digest): one run hashes its sources once


def shipped_sources_digest(workflow: Any, workdir: Path) -> str:
    """The content of every file the run's source archive holds (``dag.get_sources()``,
    as narrowed by deploy scopes), path by path. Hashed once per workflow object: the
    archive is built once per run too."""
    for known, digest in _SHIPPED:
        if known is workflow:
            return digest
    try:
        paths = sorted(str(p) for p in workflow.dag.get_sources())
    except Exception as exc:  # never block a submission on introspection
        return f"unknown:{type(exc).__name__}"
    digest = _digest([(p, _file_digest(_under(workdir, p))) for p in paths])
    _SHIPPED[:] = [(workflow, digest)]
    return digest


def _under(workdir: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else workdir / path


def changed(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Readable names of the parts that differ."""
    return [READABLE[name] for name in PART_NAMES
            if name != "identity" and old.get(name) != new.get(name)]


def _member_key(job: Any) -> str:
    return f"{job.rule.name}:{sorted(str(o) for o in job.output)}"


def _member_facts(job: Any, workdir: Path, image: str) -> dict[str, Any]:
    rule = job.rule
    try:
        code = _code(job, rule)
    except Exception as exc:  # never block a submission on introspection
        code = f"unknown:{type(exc).__name__}"
    return {
        "identity": [str(rule.name), sorted(str(o) for o in job.output)],
        "command": _command(job),
        "code": code,
        "config": _config(rule),
        "params": _stable(getattr(job, "params", "")),
        "resources": _resources(job),
        "software": _software(job, rule, image),
        "inputs": sorted(_input_fact(str(i), workdir) for i in job.input),
        "protocol": REMOTE_PROTOCOL,
    }


def _command(job: Any) -> str:
    wrapper = getattr(job.rule, "wrapper", None)
    if wrapper:
        return f"wrapper:{wrapper}"
    try:
        shellcmd = job.shellcmd
    except Exception:  # Snakemake raises for rules without a shell command
        shellcmd = None
    return f"shell:{shellcmd}" if shellcmd else ""


def _code(job: Any, rule: Any) -> str:
    """What the job executes besides its shell command."""
    for attr in ("script", "notebook"):
        path = getattr(rule, attr, None)
        if path:
            text = str(path)
            if "{" in text and hasattr(job, "format_wildcards"):
                text = str(job.format_wildcards(text))
            return f"{attr}:{text}:{_file_digest(_rule_file(rule, text))}"
    func = getattr(rule, "run_func", None)
    code = getattr(func, "__code__", None)
    if code is None or getattr(rule, "shellcmd", None):
        return ""
    return f"run:{_code_digest(code)}:{_sources_digest(rule)}"


def _sources_digest(rule: Any) -> str:
    """Every Snakefile the workflow included: a run: block may call helpers from any."""
    workflow = getattr(rule, "workflow", None)
    included = getattr(workflow, "included", None) or []
    digests = []
    for source in included:
        try:
            path = source.get_path_or_uri(secret_free=True)
        except Exception:
            path = str(source)
        digests.append(_file_digest(Path(str(path))))
    return _digest(digests)


def _config(rule: Any) -> str:
    workflow = getattr(rule, "workflow", None)
    return _digest(_stable_deep(getattr(workflow, "config", None) or {}))


def _stable_deep(value: Any) -> Any:
    """Config as plain JSON-able data (nested dicts and lists, everything else as text)."""
    if isinstance(value, dict):
        return {str(k): _stable_deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stable_deep(v) for v in value]
    return value if isinstance(value, int | float | bool | type(None)) else str(value)


def _rule_file(rule: Any, path: str) -> Path | None:
    """A script path as Snakemake resolves it: relative to the rule's Snakefile."""
    if "{" in path or "://" in path:
        return None  # wildcards or a remote script: the path itself is the fact
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    return _basedir(rule) / candidate


def _basedir(rule: Any) -> Path:
    """The directory of the rule's Snakefile (a Snakemake SourceFile, or a plain path)."""
    basedir = getattr(rule, "basedir", None)
    if basedir is None:
        return Path.cwd()
    if hasattr(basedir, "get_path_or_uri"):
        try:
            return Path(str(basedir.get_path_or_uri(secret_free=True)))
        except TypeError:  # older Snakemake: no secret_free argument
            return Path(str(basedir.get_path_or_uri()))
    return Path(str(basedir))


def _file_digest(path: Path | None) -> str:
    if path is None:
        return "unresolved"
    try:
        with path.open("rb") as f:  # streamed: a tracked data file may be large
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError:
        return "unreadable"


def _code_digest(code: Any) -> str:
    """Bytecode, constants (nested code too) and names: a changed run: block differs."""
    consts = [(_code_digest(c) if hasattr(c, "co_code") else repr(c)) for c in code.co_consts]
    return _digest([code.co_code.hex(), consts, list(code.co_names)])


def _resources(job: Any) -> dict[str, str]:
    try:
        items = dict(job.resources).items()
    except Exception:
        items = {}.items()
    out = {str(k): str(v) for k, v in items if str(k) not in VOLATILE_RESOURCES}
    out["threads"] = str(getattr(job, "threads", ""))
    return out


def _software(job: Any, rule: Any, image: str) -> list[str]:
    facts = [f"image:{image}", f"container:{getattr(job, 'container_img_url', None) or ''}"]
    conda = getattr(rule, "conda_env", None)
    if conda:
        text = str(conda)
        if text.endswith((".yaml", ".yml")):
            facts.append(f"conda:{text}:{_file_digest(_rule_file(rule, text))}")
        else:
            facts.append(f"conda:{text}")
    return facts


def _input_fact(path: str, workdir: Path) -> str:
    p = Path(path) if Path(path).is_absolute() else workdir / path
    try:
        st = p.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _stable(value: Any) -> Any:
    """Params as plain data (Snakemake's Params is list-like with names)."""
    try:
        items = value.items() if hasattr(value, "items") else None
    except TypeError:
        items = None
    if items is not None:
        return {str(k): str(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)
