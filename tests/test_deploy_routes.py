"""The two ways to register sbt's deployments, `sbt deploy` and `prefect deploy --all` from
deployments/prefect.yaml, give the same deployments on a real server; `sbt deploy` keeps a
schedule's state unless told otherwise. These tests replace the session server's sbt deployments
(test_cluster.py registers its own again when it runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sbt_core.config import load_run_config, load_study_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
NAMES = ["sbt-pipeline/pipeline", "sbt-stage/gpu", "sbt-stage/cpu", "expert-iteration-round/round",
         "grpo-round/round", "sbt-evaluate-latest/nightly", "sbt-study/study"]
POOLS = ["--gpu-pool", "routes-gpu", "--cpu-pool", "routes-cpu"]
RUN_DIR = "runs/routes"


def _env(api: str) -> dict:
    return {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false", "SBT_WORKDIR": str(ROOT), "SBT_GPU_POOL": "routes-gpu",
            "SBT_CPU_POOL": "routes-cpu", "SBT_RUN_DIR": RUN_DIR,
            "SBT_STUDY_RUN_DIR": "runs/study-tiny", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def sbt_deploy(api: str, *flags: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "-c", "tiny", "--run-dir", RUN_DIR, *POOLS,
                           *flags], cwd=ROOT, env=_env(api), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def snapshot(client) -> dict:
    """What a user sees of each deployment: where it runs, with what, on which schedule."""
    out = {}
    for name in NAMES:
        d = client.read_deployment_by_name(name)
        out[name] = {
            "entrypoint": d.entrypoint, "pool": d.work_pool_name, "parameters": d.parameters, "tags": sorted(d.tags),
            "job_variables": d.job_variables, "pull_steps": d.pull_steps, "description": d.description,
            "enforce_parameter_schema": d.enforce_parameter_schema,
            "schedules": [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules],
        }
    return out


def delete_all(client) -> None:
    from prefect.exceptions import ObjectNotFound

    for name in NAMES:
        try:
            client.delete_deployment(client.read_deployment_by_name(name).id)
        except ObjectNotFound:
            pass


@pytest.fixture
def client(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as c:
        yield c


def test_sbt_deploy_and_prefect_yaml_register_the_same_deployments(prefect_server, client):
    delete_all(client)
    out = sbt_deploy(prefect_server)
    assert "(schedule cron '0 3 * * *': active (new deployment))" in out, out
    by_sbt = snapshot(client)

    delete_all(client)
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           "deployments/prefect.yaml"], cwd=ROOT, env=_env(prefect_server), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_yaml = snapshot(client)

    tiny = load_run_config(ROOT / "configs" / "tiny.yaml").model_dump(mode="json")
    assert by_sbt["sbt-pipeline/pipeline"]["parameters"] == {"config": tiny, "run_dir": RUN_DIR}
    assert by_sbt["sbt-evaluate-latest/nightly"]["schedules"] == [("0 3 * * *", "UTC", True)]
    study = load_study_config(ROOT / "configs" / "study-tiny.yaml").model_dump(mode="json")
    assert by_sbt["sbt-study/study"]["parameters"] == {"config": study, "run_dir": "runs/study-tiny"}
    for name in NAMES:
        assert by_yaml[name] == by_sbt[name], name


def test_sbt_deploy_keeps_a_schedules_state_unless_told(prefect_server, client):
    from deployments.register import register

    sbt_deploy(prefect_server)
    nightly = client.read_deployment_by_name("sbt-evaluate-latest/nightly")
    client.update_deployment_schedule(nightly.id, nightly.schedules[0].id, active=False)  # paused in the UI

    out = sbt_deploy(prefect_server)
    assert "inactive (kept from the existing deployment)" in out, out
    assert not client.read_deployment_by_name("sbt-evaluate-latest/nightly").schedules[0].active

    config = load_run_config(ROOT / "configs" / "tiny.yaml").model_dump(mode="json")
    for asked in (True, False):
        made = register(config, RUN_DIR, gpu_pool="routes-gpu", cpu_pool="routes-cpu", nightly=asked)
        assert made["sbt-evaluate-latest/nightly"]["schedule"].endswith(f"{'active' if asked else 'inactive'} (as asked)")
        assert client.read_deployment_by_name("sbt-evaluate-latest/nightly").schedules[0].active is asked


def test_the_committed_prefect_yaml_is_what_sbt_deploy_writes(tmp_path):
    from deployments.register import prefect_yaml

    tiny = load_run_config(ROOT / "configs" / "tiny.yaml").model_dump(mode="json")
    study = load_study_config(ROOT / "configs" / "study-tiny.yaml").model_dump(mode="json")
    assert (ROOT / "deployments" / "prefect.yaml").read_text() == prefect_yaml(tiny, study=study), \
        "regenerate: sbt deploy -c tiny --write-prefect-yaml deployments/prefect.yaml"


def test_a_study_config_deploys_as_the_study_flow_and_its_runs_validate(prefect_server, client):
    """`sbt deploy -c study-17m` (a study config is not a run config): the study deployment with that config, the
    stage deployments its parts use, no pipeline deployment of it; a flow run of it passes the server's
    parameter validation and a bad parameter does not."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "-c", "study-17m", "--run-dir", "runs/s17",
                           *POOLS], cwd=ROOT, env=_env(prefect_server), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(line.split(":")[0] for line in proc.stdout.splitlines()) == \
        ["sbt-stage/cpu", "sbt-stage/gpu", "sbt-study/study"]
    d = client.read_deployment_by_name("sbt-study/study")
    want = load_study_config(ROOT / "configs" / "study-17m.yaml").model_dump(mode="json")
    assert d.parameters == {"config": want, "run_dir": "runs/s17"} and d.enforce_parameter_schema
    run = client.create_flow_run_from_deployment(d.id, parameters={"run_dir": "runs/s17-b"})
    try:
        assert client.read_flow_run(run.id).parameters["run_dir"] == "runs/s17-b"
        with pytest.raises(Exception, match="409|422|alidation"):  # the server refuses a bad parameter
            client.create_flow_run_from_deployment(d.id, parameters={"config": {"domains": "not a mapping"}})
    finally:
        client.delete_flow_run(run.id)


def test_gpu_slots_cap_the_gpu_pool_and_waiting_parents_take_none(prefect_server, client):
    """`--gpu-slots N`: the GPU pool runs at most N flow runs at once. A config whose stages run as their own flow
    runs (execution.mode deployments) puts its parent flows on the CPU pool, so a waiting pipeline holds no GPU."""
    from deployments.register import register
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config = load_run_config(ROOT / "configs" / "tiny.yaml", ["execution.mode=deployments"]).model_dump(mode="json")
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        made = register(config, RUN_DIR, gpu_pool="slots-gpu", cpu_pool="slots-cpu", gpu_slots=3)
        with pytest.raises(ValueError, match="at least 1"):
            register(config, RUN_DIR, gpu_pool="slots-gpu", cpu_pool="slots-cpu", gpu_slots=0)
    assert client.read_work_pool("slots-gpu").concurrency_limit == 3
    assert client.read_work_pool("slots-cpu").concurrency_limit is None
    pools = {name: client.read_deployment_by_name(name).work_pool_name for name in made}
    assert pools["sbt-stage/gpu"] == "slots-gpu" and pools["sbt-stage/cpu"] == "slots-cpu"
    assert {pools[n] for n in ("sbt-pipeline/pipeline", "expert-iteration-round/round", "grpo-round/round")} == \
        {"slots-cpu"}
    delete_all(client)  # the other tests' deployments are on the routes pools


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_a_gpu_run_gets_one_gpu_and_an_sft_of_n_ranks_gets_n(pool_type):
    """The GPU pool's template renders to one GPU a flow run (never every GPU of the host); an SFT stage with
    `num_processes: 4` sends job variables that render to four (`flows.stage_runs._gpus`)."""
    from prefect.utilities.templating import apply_values

    from deployments.register import base_job_template, gpu_job_variables

    template = base_job_template(pool_type, gpu=True)
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}

    def gpus(values):
        job = apply_values(template["job_configuration"], values)
        if pool_type == "docker":
            return job["container_create_kwargs"]["device_requests"][0]["count"]
        return job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]

    assert gpus(defaults) == 1
    assert gpus({**defaults, **gpu_job_variables(pool_type, 4)}) == 4
    assert gpu_job_variables("process", 4) == {}  # a process worker's runs see its CUDA_VISIBLE_DEVICES
