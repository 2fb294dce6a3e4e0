"""Deployment: container images, Kubernetes manifests, systemd units, the example settings
file, and the portability of the Beam pipeline to cluster runners.

No container engine or cluster exists here, so the manifests are checked by parsing: the
Kubernetes ones against the official client's API models (a misspelt or misplaced field, a
missing required one, fails), the systemd units with ``systemd-analyze verify`` where it is
installed, the Dockerfiles instruction by instruction against the README's install steps.
Their command lines are parsed by the real CLI, and the scheduled job's command, with its
environment and settings file, runs one real cycle here (paths remapped to a temporary
folder, the simulated backend standing in for a GPU). Portability: every transform of the
pipeline round-trips through Beam's pickler and still works after unpickling, and a
backfill runs through Beam's portable job API with its workers in a separate worker pool
process -- the path Flink and Spark take.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT
from tests.helpers.cli import run_cli

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
EXAMPLE = DEPLOY / "phylolm.example.toml"
CONFIG_IN_POD = "/etc/phylolm/phylolm.toml"
SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|CREDENTIAL)", re.I)
TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|api_org_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9]{16,})\b")


# ---- helpers ----------------------------------------------------------------------------------

def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                out.append((f.name, doc))
    return out


def k8s_find(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def key_paths(obj, prefix: str = "") -> set[str]:
    if isinstance(obj, dict):
        return set().union(*([{f"{prefix}/{k}"} | key_paths(v, f"{prefix}/{k}") for k, v in obj.items()] or [set()]))
    if isinstance(obj, list):
        return set().union(*([key_paths(v, f"{prefix}[{i}]") for i, v in enumerate(obj)] or [set()]))
    return set()


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            current = sections.setdefault(s[1:-1], [])
            continue
        assert current is not None and "=" in s, f"{path.name}: bad line {line!r}"
        k, _, v = s.partition("=")
        current.append((k.strip(), v.strip()))
    return sections


def unit_get(sections, section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def cli_context(args: list[str]):
    """Parse ``phylolm ARGS`` with the real command definitions (nothing runs)."""
    import click
    import typer.main

    from indexer.cli import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name="phylolm")
    cmd = group.get_command(root, args[0])
    assert cmd is not None, f"no command {args[0]!r}"
    return cmd.make_context(args[0], list(args[1:]), parent=root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service on port {port} exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing listening on port {port} after {timeout}s")


@pytest.fixture(scope="module")
def sim_hub(tmp_path_factory) -> Path:
    """A small simulated ecosystem (16 genes): Hub-style repositories for the simulated backend."""
    out = tmp_path_factory.mktemp("deploy-eco") / "hub"
    r = run_cli("simulate", "--models", "8", "--seed", "11", "--genes", "16", "--samples", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


# The simulated uploads are dated years back: the first poll's window is widened to reach them.
SIM_ENV = {"PHYLOLM_BACKEND": "simulated", "PHYLOLM_GENES": "16", "PHYLOLM_SAMPLES": "8",
           "PHYLOLM_FIRST_WINDOW_HOURS": "200000"}


def _count_indexed(catalog: Path, cwd: Path) -> int:
    r = run_cli("sql", "select count(*) n from models where status = 'indexed'", "--catalog", str(catalog),
                "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]["n"]


# ---- the example settings file ----------------------------------------------------------------

def test_example_config_parses_and_names_every_setting(monkeypatch, tmp_path):
    from indexer.app.settings import Settings, load_settings

    for k in list(os.environ):
        if k.startswith("PHYLOLM_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    settings, source = load_settings(config=EXAMPLE)
    assert settings.catalog == Path("/var/lib/phylolm/phylolm.duckdb")
    assert settings.publish_dir == Path("/srv/phylolm")
    assert settings.cache_dir == Path("/var/cache/phylolm")
    assert (settings.samples, settings.temperature, settings.max_tokens) == (32, 0.7, 5)  # the paper's
    assert source["catalog"] == "file" and source["hub"] == "default"
    text = EXAMPLE.read_text()
    for field in Settings.model_fields:  # each setting is shown, set or commented out
        assert re.search(rf"^#? ?{field} = ", text, re.M), f"{field} missing from the example config"
    # precedence over the example file: environment over file, CLI over environment
    monkeypatch.setenv("PHYLOLM_BACKEND", "vllm")
    monkeypatch.setenv("PHYLOLM_SAMPLES", "16")
    settings, source = load_settings({"samples": 4}, config=EXAMPLE)
    assert (settings.backend, source["backend"]) == ("vllm", "env")
    assert (settings.samples, source["samples"]) == (4, "cli")
    assert (settings.seed, source["seed"]) == (0, "file")


def test_status_shows_file_env_and_cli_sources(cli, tmp_path):
    """`phylolm status` over the example file: each value with the layer it came from."""
    cli("init", "--catalog", "cli.duckdb")
    env = {"PHYLOLM_CONFIG": str(EXAMPLE), "PHYLOLM_BACKEND": "vllm", "PHYLOLM_CATALOG": "env.duckdb"}
    r = cli("status", "--catalog", "cli.duckdb", "--json", env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)["settings"]
    assert shown["catalog"]["source"] == "cli" and shown["catalog"]["value"].endswith("cli.duckdb")
    assert shown["backend"] == {"value": "vllm", "source": "env"}
    assert shown["publish_dir"] == {"value": "/srv/phylolm", "source": "file"}
    assert shown["hub"]["source"] == "default"


def test_configmap_carries_the_example_config():
    cm = k8s_find("ConfigMap", "phylolm-config")
    assert cm["data"]["phylolm.toml"].strip() == EXAMPLE.read_text().strip()


# ---- container images -------------------------------------------------------------------------

def _readme_and_setup() -> tuple[str, str]:
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md (the install steps the images follow) is missing"
    return readme.read_text(), (ROOT / "scripts" / "setup.sh").read_text()


@pytest.mark.parametrize("name, extra_install", [("Dockerfile.cpu", None),
                                                 ("Dockerfile.gpu", '.venv/bin/python -m pip install -q -e ".[vllm]"')])
def test_dockerfile_follows_the_readme_install(name, extra_install):
    steps = dockerfile(DOCKER / name)
    kinds = [k for k, _ in steps]
    assert kinds[0] in ("FROM", "ARG") and "FROM" in kinds
    assert kinds.count("FROM") == 1
    readme, setup = _readme_and_setup()
    # the README installs with scripts/setup.sh, which installs the package with its cpu extra
    assert "bash scripts/setup.sh" in readme
    assert re.search(r'pip install .*-e "\.\[cpu,test\]"', setup)
    runs = [a for k, a in steps if k == "RUN"]
    install = [r for r in runs if "setup.sh" in r]
    assert len(install) == 1 and "bash scripts/setup.sh" in install[0]
    if extra_install:  # the GPU image adds the vllm extra, as the README says
        assert '.[vllm]' in readme
        assert extra_install in install[0]
    else:
        assert "pip install" not in install[0]  # nothing beyond the README's step
    # what it copies exists, and is only what the package needs
    copies = [a.split() for k, a in steps if k == "COPY"]
    for parts in copies:
        for src in [p for p in parts[:-1] if not p.startswith("--")]:
            assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    patterns = [l.strip() for l in ignore if l.strip() and not l.startswith("#")]
    assert patterns[0] == "*"  # an allow-list: everything is excluded unless named
    assert "**/.env" in patterns and "**/*.duckdb" in patterns
    allowed = {l[1:] for l in patterns if l.startswith("!")}
    for parts in copies:
        for src in [p for p in parts[:-1] if not p.startswith("--")]:
            assert src.rstrip("/") in allowed, f"{name} copies {src}, which its .dockerignore excludes"
    # runs as an unprivileged numeric user, entry point is the CLI
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) >= 1000
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["phylolm"]
    # no secrets baked in: no token-ish ENV or ARG, nothing that looks like a token anywhere
    for k, a in steps:
        if k in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", a)
            assert not [n for n in names if SECRETISH.search(n)], f"{name}: {k} {a}"
    assert not TOKEN_LIKE.search((DOCKER / name).read_text())
    # every folder the job writes is a declared volume, matching the example config's paths
    volumes = json.loads(dict(steps)["VOLUME"])
    settings = tomllib.loads(EXAMPLE.read_text())
    assert str(Path(settings["catalog"]).parent) in volumes
    assert settings["publish_dir"] in volumes and settings["cache_dir"] in volumes
    env = " ".join(a for k, a in steps if k == "ENV")
    for var in ("HF_HOME", "XDG_CACHE_HOME"):
        value = re.search(rf"{var}=(\S+)", env).group(1)
        assert value.startswith(settings["cache_dir"] + "/"), f"{var} must live on the cache volume"
    assert f"PHYLOLM_CONFIG={CONFIG_IN_POD}" in env


# ---- Kubernetes -------------------------------------------------------------------------------

def test_k8s_manifests_match_the_api_models():
    """Each document deserialises into the official client's model of its kind and back with
    no field lost: a misspelt, misplaced or missing required field fails here."""
    pytest.importorskip("kubernetes", reason="the kubernetes client is in the test extra")
    from kubernetes.client import ApiClient

    api = ApiClient()
    docs = k8s_docs()
    assert {d["kind"] for _, d in docs} >= {"CronJob", "Deployment", "PersistentVolumeClaim", "ConfigMap", "Service"}
    for fname, doc in docs:
        group_version = doc["apiVersion"].split("/")[-1]
        model = api._ApiClient__deserialize(doc, f"{group_version.capitalize()}{doc['kind']}")
        back = api.sanitize_for_serialization(model)
        assert key_paths(doc) == key_paths(back), f"{fname} {doc['kind']}: {key_paths(doc) ^ key_paths(back)}"
        assert doc["metadata"]["name"]


def _container(doc: dict) -> dict:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    return containers[0]


def _mounts(doc: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume) of the pod's one container."""
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in _container(doc).get("volumeMounts", [])}


WRITERS = [("CronJob", "phylolm-watch-once"), ("Deployment", "phylolm-watch")]


@pytest.mark.parametrize("kind, name", WRITERS)
def test_k8s_writer_pods(kind, name):
    doc = k8s_find(kind, name)
    settings = tomllib.loads(EXAMPLE.read_text())
    c = _container(doc)
    assert c["image"] and c["command"] == ["phylolm"]
    args = c["args"]
    assert args[0] == "watch" and ("--once" in args) == (kind == "CronJob")
    assert args[args.index("--config") + 1] == CONFIG_IN_POD
    mounts = _mounts(doc)
    claims = {p: v["persistentVolumeClaim"]["claimName"] for p, (_, v) in mounts.items() if "persistentVolumeClaim" in v}
    assert claims[str(Path(settings["catalog"]).parent)] == "phylolm-catalog"
    assert claims[settings["publish_dir"]] == "phylolm-publish"
    assert mounts[str(Path(CONFIG_IN_POD).parent)][1]["configMap"]["name"] == "phylolm-config"
    assert mounts[str(Path(CONFIG_IN_POD).parent)][0].get("readOnly") is True
    for claim in set(claims.values()):
        k8s_find("PersistentVolumeClaim", claim)
    # a read-only root: every place the job writes is a volume
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for path in (settings["cache_dir"], "/tmp", "/home/phylolm"):
        assert path in mounts, f"{name}: {path} is written but not a volume"
    pod = pod_spec(doc)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 1000
    assert pod["automountServiceAccountToken"] is False
    # the token only from a Secret, never a literal
    for e in c.get("env", []):
        if SECRETISH.search(e["name"]):
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
    assert not TOKEN_LIKE.search(json.dumps(doc))
    assert "memory" in c["resources"]["limits"]


def test_k8s_one_writer_per_catalog():
    cron = k8s_find("CronJob", "phylolm-watch-once")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    dep = k8s_find("Deployment", "phylolm-watch")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert k8s_find("PersistentVolumeClaim", "phylolm-catalog")["spec"]["accessModes"] in (
        ["ReadWriteOncePod"], ["ReadWriteOnce"])
    # the two writers' pods are told apart by their labels (neither controller adopts the other's)
    sel = dep["spec"]["selector"]["matchLabels"]
    cron_labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert not all(cron_labels.get(k) == v for k, v in sel.items())
    assert not [d for _, d in k8s_docs() if d["kind"] == "Secret"]  # secrets are created, never committed


def test_k8s_gpu_watcher_asks_for_a_gpu():
    c = _container(k8s_find("Deployment", "phylolm-watch"))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "gpu" in c["image"]
    assert {"name": "PHYLOLM_BACKEND", "value": "vllm"} in c["env"]
    assert "/dev/shm" in _mounts(k8s_find("Deployment", "phylolm-watch"))
    cron = _container(k8s_find("CronJob", "phylolm-watch-once"))
    assert "cpu" in cron["image"] and "nvidia.com/gpu" not in cron["resources"].get("limits", {})


def test_k8s_publish_is_served_read_only():
    server = k8s_find("Deployment", "phylolm-publish")
    settings = tomllib.loads(EXAMPLE.read_text())
    mounts = _mounts(server)
    served = [(m, v) for m, v in mounts.values() if v.get("persistentVolumeClaim", {}).get("claimName") == "phylolm-publish"]
    assert len(served) == 1
    mount, volume = served[0]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert _container(server)["securityContext"]["readOnlyRootFilesystem"] is True
    conf = k8s_find("ConfigMap", "phylolm-publish-nginx")["data"]["default.conf"]
    assert f"root {mount['mountPath']};" in conf and "index index.html report.html;" in conf
    port = _container(server)["ports"][0]["containerPort"]
    assert f"listen {port};" in conf
    svc = k8s_find("Service", "phylolm-publish")
    assert svc["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]
    assert k8s_find("PersistentVolumeClaim", "phylolm-publish")["spec"]["accessModes"] == ["ReadWriteMany"]
    # the writer's publish folder is the one served
    writer_mounts = _mounts(k8s_find("CronJob", "phylolm-watch-once"))
    assert writer_mounts[settings["publish_dir"]][1]["persistentVolumeClaim"]["claimName"] == "phylolm-publish"


# ---- systemd ----------------------------------------------------------------------------------

def _exec_args(sections) -> list[str]:
    (line,) = unit_get(sections, "Service", "ExecStart")
    argv = shlex.split(line)
    assert argv[0] == "/opt/phylolm/.venv/bin/phylolm"  # where the README's install puts it
    return argv[1:]


def test_systemd_timer_and_services():
    once = unit(SYSTEMD / "phylolm-watch.service")
    timer = unit(SYSTEMD / "phylolm-watch.timer")
    watcher = unit(SYSTEMD / "phylolm-watcher.service")
    args = _exec_args(once)
    assert args[:2] == ["watch", "--once"] and args[args.index("--config") + 1] == CONFIG_IN_POD
    assert unit_get(once, "Service", "Type") == ["oneshot"]
    assert unit_get(timer, "Timer", "Unit") == ["phylolm-watch.service"]
    assert unit_get(timer, "Timer", "OnCalendar") and unit_get(timer, "Timer", "Persistent") == ["true"]
    assert unit_get(timer, "Install", "WantedBy") == ["timers.target"]
    wargs = _exec_args(watcher)
    assert wargs[0] == "watch" and "--once" not in wargs
    assert "phylolm-watch.timer" in " ".join(unit_get(watcher, "Unit", "Conflicts"))
    assert unit_get(watcher, "Service", "Restart") == ["on-failure"]
    settings = tomllib.loads(EXAMPLE.read_text())
    for sections in (once, watcher):
        get = lambda k: unit_get(sections, "Service", k)  # noqa: E731
        assert get("User") == ["phylolm"]
        assert get("NoNewPrivileges") == ["yes"] and get("ProtectSystem") == ["strict"]
        assert get("ProtectHome") == ["yes"] and get("PrivateTmp") == ["yes"]
        assert get("CapabilityBoundingSet") == [""]
        # the token from a root-only environment file, never inline
        assert get("EnvironmentFile") == ["-/etc/phylolm/env"]
        assert not [e for e in get("Environment") if SECRETISH.search(e.split("=")[0])]
        # the only writable places are the ones the settings name
        assert f"/var/lib/{get('StateDirectory')[0]}" == str(Path(settings["catalog"]).parent)
        assert f"/var/cache/{get('CacheDirectory')[0]}" == settings["cache_dir"]
        assert get("ReadWritePaths") == [settings["publish_dir"]]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    """systemd's own checker, with ExecStart pointed at this checkout's installed CLI (the
    units name the install location /opt/phylolm). Any warning fails, unknown keys included."""
    phylolm = Path(sys.executable).with_name("phylolm")
    assert phylolm.is_file()
    names = ["phylolm-watch.service", "phylolm-watch.timer", "phylolm-watcher.service"]
    for n in names:
        text = (SYSTEMD / n).read_text().replace("/opt/phylolm/.venv/bin/phylolm", str(phylolm))
        (tmp_path / n).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *[str(tmp_path / n) for n in names]],
                       capture_output=True, text=True, timeout=60)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    assert r.returncode == 0 and not lines, "\n".join(lines)


# ---- command lines against the real CLI --------------------------------------------------------

def _commands() -> list[tuple[str, list[str]]]:
    cmds = []
    for kind, name in WRITERS:
        c = _container(k8s_find(kind, name))
        cmds.append((f"{kind}/{name}", c["args"]))
    for n in ("phylolm-watch.service", "phylolm-watcher.service"):
        cmds.append((n, _exec_args(unit(SYSTEMD / n))))
    for name in ("Dockerfile.cpu", "Dockerfile.gpu"):
        cmds.append((f"{name} CMD", json.loads(dict(dockerfile(DOCKER / name))["CMD"])))
    return cmds


@pytest.mark.parametrize("where, args", _commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_deployed_command_lines_parse(where, args):
    """Every option is one the command declares: `watch` passes unknown options on to Beam,
    so a misspelt option would otherwise be dropped silently."""
    ctx = cli_context(args)
    assert ctx.command.name == "watch"
    assert ctx.args == [], f"{where}: {ctx.args} would be handed to Beam"
    assert ctx.params["once"] == ("--once" in args)


@pytest.mark.integration
@pytest.mark.parametrize("where", ["cronjob", "systemd"])
def test_scheduled_job_runs_one_real_cycle(where, sim_hub, tmp_path):
    """The scheduled job's own command, environment and settings file, with its volumes
    remapped to a temporary folder: one cycle indexes the (simulated) Hub and publishes, and
    nothing is written under HOME (which the pod mounts as a small scratch volume only)."""
    settings_text = EXAMPLE.read_text()
    mapping = {"/var/lib/phylolm": tmp_path / "catalog", "/srv/phylolm": tmp_path / "publish",
               "/var/cache/phylolm": tmp_path / "cache", str(Path(CONFIG_IN_POD).parent): tmp_path / "etc"}
    home = tmp_path / "home"
    for p in [*mapping.values(), home]:
        p.mkdir()
    if where == "cronjob":
        c = _container(k8s_find("CronJob", "phylolm-watch-once"))
        args = list(c["args"])
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        env.update(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in dockerfile(DOCKER / "Dockerfile.cpu")
                                                      if k == "ENV")))
        env.pop("PATH")
    else:
        sections = unit(SYSTEMD / "phylolm-watch.service")
        args = _exec_args(sections)
        env = dict(e.split("=", 1) for e in unit_get(sections, "Service", "Environment"))
    env.pop("HF_TOKEN", None)

    def remap(s: str) -> str:
        for src, dst in mapping.items():
            s = s.replace(src, str(dst))
        return s

    (mapping[str(Path(CONFIG_IN_POD).parent)] / "phylolm.toml").write_text(remap(settings_text))
    args = [remap(a) for a in args]
    env = {k: remap(v) for k, v in env.items()}
    env.update(SIM_ENV, PHYLOLM_HUB=str(sim_hub), HOME=str(home))
    r = run_cli(*args, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    catalog = tmp_path / "catalog" / "phylolm.duckdb"
    assert _count_indexed(catalog, tmp_path) == 8
    assert (tmp_path / "publish" / "report.html").is_file() and (tmp_path / "publish" / "tree.nwk").is_file()
    assert list(home.iterdir()) == [], f"written under HOME: {list(home.rglob('*'))[:5]}"
    # the cycle again: nothing new, nothing done twice
    r = run_cli(*args, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _count_indexed(catalog, tmp_path) == 8


# ---- portability: pickling --------------------------------------------------------------------

def _pipeline_classes():
    import apache_beam as beam

    import pipelines.run
    import pipelines.transforms

    found = {}
    for mod in (pipelines.transforms, pipelines.run):
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and obj.__module__ == mod.__name__
                    and issubclass(obj, (beam.DoFn, beam.PTransform))):
                found[name] = obj
    return found


def _instantiate(cls, config):
    kwargs = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if name == "config":
            kwargs[name] = config
        elif name == "interval":
            kwargs[name] = 1.0
        else:
            raise AssertionError(f"{cls.__name__}: don't know how to build required argument {name!r}")
    return cls(**kwargs)


def _picklers():
    from apache_beam.internal import pickler

    libs = [pickler.USE_CLOUDPICKLE]
    if pickler.dill_pickler is not None:
        libs.append(pickler.USE_DILL)
    return libs


@pytest.mark.parametrize("library", _picklers())
def test_every_transform_pickles_without_setting_up(library, tmp_path):
    """Each DoFn and composite transform round-trips through Beam's pickler (what a runner
    ships to its workers) carrying only its configuration: pickling builds no Hub client,
    engine or catalog (``setup`` has not run), and the copy equals the original's config."""
    from apache_beam.internal import pickler

    from indexer.app.job import JobConfig

    # an endpoint that does not exist and a catalog that is not there: any connection or
    # catalog opening during construction or pickling would fail or leave a file behind
    config = JobConfig(catalog=tmp_path / "absent" / "c.duckdb", hub="http://127.0.0.1:9", backend="simulated",
                       cache_dir=tmp_path / "cache")
    classes = _pipeline_classes()
    assert {"ListNewModelsFn", "FirstSightFn", "ProbeModelsFn", "UpdateIndexFn", "ProbeAndIndex",
            "IndexNewModels", "ReportProgress"} <= set(classes)
    previous = pickler.desired_pickle_lib
    try:
        pickler.set_library(library)
        for name, cls in classes.items():
            obj = _instantiate(cls, config)
            blob = pickler.dumps(obj)
            copy = pickler.loads(blob)
            assert type(copy) is cls, name
            assert not hasattr(copy, "step"), f"{name} was set up before it reached a worker"
            if hasattr(obj, "config"):
                assert copy.config == config, name
            assert len(blob) < 200_000, f"{name} pickles to {len(blob)} bytes: it carries more than its config"
    finally:
        pickler.desired_pickle_lib = previous
    assert not (tmp_path / "absent").exists() and not (tmp_path / "cache").exists()


def test_whole_pipeline_survives_the_runner_api(tmp_path):
    """The pipeline as a runner receives it: Beam's portable representation (every DoFn
    pickled into protobuf) and back, for the streaming, the once and the backfill shapes."""
    import apache_beam as beam

    from indexer.app.job import JobConfig
    from pipelines.transforms import IndexNewModels, ProbeAndIndex, ReportProgress

    config = JobConfig(catalog=tmp_path / "c.duckdb", hub="http://127.0.0.1:9", backend="simulated")
    p = beam.Pipeline(runner="FnApiRunner")
    polls = p | "OnePoll" >> beam.Create([0.0])
    (polls | IndexNewModels(config) | beam.Map(lambda s: ("index", s)) | beam.ParDo(ReportProgress()))
    (p | "Listed" >> beam.Create([]) | ProbeAndIndex(config, publish_every=5.0))
    proto = p.to_runner_api()
    again = beam.Pipeline.from_runner_api(proto, p.runner, p._options)
    labels = {t.full_label for t in again.transforms_stack[0].parts}
    assert any("IndexNewModels" in l for l in labels) and any("ProbeAndIndex" in l for l in labels)
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"IndexNewModels/ProbeAndIndex/UpdateIndex", "IndexNewModels/ListNewModels",
            "IndexNewModels/ProbeAndIndex/Probe"} <= names


@pytest.mark.integration
def test_unpickled_steps_do_the_work(sim_hub, tmp_path):
    """A worker's view: DoFns that went through the pickler, set up on the far side, list,
    probe and index real (simulated) models into a real catalog."""
    from apache_beam.internal import pickler

    from indexer.app.hub import open_hub
    from indexer.app.job import JobConfig
    from pipelines.transforms import ListNewModelsFn, ProbeModelsFn, UpdateIndexFn
    from schemas.records import ProbeParams

    with open_hub(str(sim_hub)) as url:
        config = JobConfig(catalog=tmp_path / "c.duckdb", hub=url, backend="simulated", n_genes=16,
                           params=ProbeParams(n_samples=8), cache_dir=tmp_path / "cache")
        lister, prober, writer = (pickler.loads(pickler.dumps(fn)) for fn in
                                  (ListNewModelsFn(config), ProbeModelsFn(config), UpdateIndexFn(config)))
        lister.setup()
        listed = list(lister.process(0.0))[:3]
        assert len(listed) == 3
        prober.setup()
        keyed = [next(iter(prober.process(m))) for m in listed]
        prober.teardown()
        assert {k for k, _ in keyed} == {"index"} and all(o.probe is not None for _, o in keyed)

        class State:  # the runner's per-key state cell, which exists only inside a runner
            value = None

            def read(self):
                return self.value

            def write(self, v):
                self.value = v

        writer.start_bundle()
        summaries = [next(iter(writer.process(k, last=State()))) for k in keyed]
        writer.finish_bundle()
    assert [s.status for s in summaries] == ["indexed"] * 3
    assert _count_indexed(tmp_path / "c.duckdb", tmp_path) == 3


# ---- portability: Beam's portable job API with an external worker pool -------------------------

@pytest.mark.integration
def test_backfill_through_the_portable_job_api(sim_hub, tmp_path):
    """The cluster path, rehearsed on one machine: the CLI submits the pipeline to a job
    service over Beam's portable job API (as it would to a Flink or Spark job server), and
    the work runs in SDK workers started by a separate worker pool process (as the Python
    worker pool runs beside a Flink task manager: ``--environment_type=EXTERNAL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHYLOLM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # workers start `python`
    job_port, pool_port = free_port(), free_port()
    services = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                          "--port", str(job_port)], env=env, cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "w")),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          "--service_port", str(pool_port)], env=env, cwd=tmp_path,
                         stdout=open(tmp_path / "pool.out", "w"), stderr=open(tmp_path / "pool.log", "w")),
    ]
    try:
        wait_port(job_port, services[0])
        wait_port(pool_port, services[1])
        catalog = tmp_path / "c.duckdb"
        r = run_cli("backfill", "--hub", str(sim_hub), "--catalog", str(catalog), "--backend", "simulated",
                    "--genes", "16", "--samples", "8", "--runner=PortableRunner",
                    f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
                    f"--environment_config=localhost:{pool_port}", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:] + (tmp_path / "pool.log").read_text()[-2000:]
        assert "8 model(s) to index" in r.stdout
        assert _count_indexed(catalog, tmp_path) == 8
        # the work ran in the pool's workers, not in the submitting process
        assert "Starting worker" in (tmp_path / "pool.log").read_text()
    finally:
        for s in services:
            s.terminate()
        for s in services:
            try:
                s.wait(timeout=20)
            except subprocess.TimeoutExpired:
                s.kill()


# ---- cluster runner: the worker image and the documented commands ------------------------------

def test_beam_worker_image_matches_the_pinned_beam():
    steps = dockerfile(DOCKER / "Dockerfile.beam-worker")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    beam_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("apache-beam=="))
    assert args["BEAM_SDK_IMAGE"].endswith(":" + beam_pin.split("==")[1]), "worker boot from another Beam release"
    cpu_base = dict(a.split("=", 1) for k, a in dockerfile(DOCKER / "Dockerfile.cpu") if k == "ARG" and "=" in a)
    py = re.search(r"python:(\d+\.\d+)", cpu_base["PYTHON_IMAGE"]).group(1)
    assert f"beam_python{py}_sdk" in args["BEAM_SDK_IMAGE"], "worker boot built for another Python"
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in [f"{k} {a}" for k, a in steps]
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["/opt/apache/beam/boot"]
    # the boot program must use the image's .venv, not make a fresh environment without phylolm
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in " ".join(a for k, a in steps if k == "ENV")


def _documented_runs() -> list[list[str]]:
    """The `phylolm watch|backfill ...` commands in CLUSTER.md's code blocks, as argv."""
    text = (DEPLOY / "CLUSTER.md").read_text()
    runs = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("phylolm "):
                runs.append(shlex.split(line)[1:])
    return runs


def test_cluster_commands_parse(caplog):
    """Each documented cluster command: phylolm's own options parse, and every option left
    for Beam is one Beam knows (Beam drops unknown ones with only a warning)."""
    import logging

    from apache_beam.options.pipeline_options import PipelineOptions

    runs = _documented_runs()
    runners = {a.split("=", 1)[1] for argv in runs for a in argv if a.startswith("--runner=")}
    assert runners >= {"PortableRunner", "FlinkRunner", "DataflowRunner"}
    for argv in runs:
        ctx = cli_context(argv)
        assert ctx.command.name in ("watch", "backfill")
        # backfill's positional model ids swallow unknown options; the command hands
        # everything from the first one on to Beam, as here
        ids = list(ctx.params.get("model_ids") or [])
        cut = next((i for i, a in enumerate(ids) if a.startswith("-")), len(ids))
        beam_args = ids[cut:] + list(ctx.args)
        # a runner is chosen by Beam options, or by phylolm's own dask options (--dask-workers,
        # --dask-scheduler: Beam's DaskRunner, whose options the command builds)
        dask = ctx.params.get("dask_workers") or ctx.params.get("dask_scheduler")
        assert (beam_args or dask) and not ids[:cut], argv
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            PipelineOptions(beam_args).get_all_options()
        dropped = [r.getMessage() for r in caplog.records if "unparseable" in r.getMessage().lower()]
        assert not dropped, f"{argv}: {dropped}"
