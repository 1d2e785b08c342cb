"""envs/pipeline.linux-64.pin.txt (what Snakemake installs when it exists) against
envs/pipeline.yaml, and the post-deploy script that adds the pip layer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
ENV = REPO / "envs" / "pipeline.yaml"
PIN = REPO / "envs" / "pipeline.linux-64.pin.txt"
POST_DEPLOY = REPO / "envs" / "pipeline.post-deploy.sh"
# conda package file names: name-version-build.(conda|tar.bz2); names may hold dashes
_FILE = re.compile(r"^(?P<name>.+)-(?P<version>[^-]+)-(?P<build>[^-]+)\.(conda|tar\.bz2)$")
_URL = re.compile(r"^https://conda\.anaconda\.org/(?P<channel>[\w-]+)/(?P<subdir>[\w-]+)/"
                  r"(?P<file>[^/#]+)#(?P<md5>[0-9a-f]{32})$")


def pinned() -> dict[str, dict[str, str]]:
    """The pin file's packages: name -> version, build, channel, subdir."""
    lines = PIN.read_text().splitlines()
    body = lines[lines.index("@EXPLICIT") + 1:]
    packages: dict[str, dict[str, str]] = {}
    for line in body:
        url = _URL.match(line)
        assert url, f"not an explicit conda URL with md5: {line!r}"
        file = _FILE.match(url["file"])
        assert file, url["file"]
        assert file["name"] not in packages, f"{file['name']} pinned twice"
        packages[file["name"]] = {"version": file["version"], "build": file["build"],
                                  "channel": url["channel"], "subdir": url["subdir"]}
    return packages


def conda_specs() -> dict[str, str]:
    """pipeline.yaml's conda dependencies (not the pip list): name -> version specifier."""
    deps = yaml.safe_load(ENV.read_text())["dependencies"]
    specs = {}
    for dep in deps:
        if isinstance(dep, str):
            name, spec = re.match(r"^([\w.-]+)\s*(.*)$", dep).groups()
            specs[name] = spec.replace(" ", "")
    return specs


def test_pin_file_is_an_explicit_linux64_list():
    lines = PIN.read_text().splitlines()
    assert "# platform: linux-64" in lines and "@EXPLICIT" in lines
    assert lines.index("# platform: linux-64") < lines.index("@EXPLICIT")
    packages = pinned()
    assert {p["subdir"] for p in packages.values()} <= {"linux-64", "noarch"}
    channels = yaml.safe_load(ENV.read_text())["channels"]
    assert {p["channel"] for p in packages.values()} <= {c for c in channels if c != "nodefaults"}


def test_pin_file_agrees_with_pipeline_yaml():
    packages = pinned()
    specs = conda_specs()
    assert specs, "pipeline.yaml lists no conda packages"
    for name, spec in specs.items():
        assert name in packages, f"{name} ({ENV.name}) is not in {PIN.name}"
        assert packages[name]["version"] in SpecifierSet(spec), (name, spec, packages[name])
    # what the pin adds beyond the YAML is python's own runtime, nothing the YAML leaves out
    runtime = {"_libgcc_mutex", "_openmp_mutex", "bzip2", "ca-certificates", "ld_impl_linux-64",
               "libffi", "libgcc-ng", "libgomp", "libnsl", "libsqlite", "libuuid", "libzlib",
               "ncurses", "openssl", "readline", "setuptools", "tk", "tzdata", "wheel", "xz"}
    assert set(packages) - set(specs) <= runtime, set(packages) - set(specs) - runtime
    # the pin must not shadow the pip layer (torch etc. come from PyPI with pyproject's pins)
    pip = next(d["pip"] for d in yaml.safe_load(ENV.read_text())["dependencies"]
               if isinstance(d, dict))
    pip_names = {re.split(r"[<>=!~ \[]", p, maxsplit=1)[0].lower() for p in pip
                 if not p.startswith("-")}
    assert not pip_names & set(packages)


def test_post_deploy_script_installs_the_package_or_names_the_missing_source(tmp_path):
    text = POST_DEPLOY.read_text()
    assert 'pip install --no-input -e "$src"' in text
    # run for real outside a checkout: one clear line, exit code 2, nothing installed
    proc = subprocess.run(["bash", str(POST_DEPLOY)], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"envs/pipeline.post-deploy.sh: no pyproject.toml in {tmp_path}; "
        f"set SUBSPACE_FSL_SOURCE"]
