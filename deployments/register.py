"""Register sbt's deployments and work pools on a Prefect server (`sbt deploy`).

Deployments (flow/deployment):
- `sbt-pipeline/pipeline`: the whole pipeline (GPU pool; in-process stages unless the config's
  `execution.mode` is `deployments`).
- `sbt-stage/gpu` and `sbt-stage/cpu`: one stage as its own flow run; the pipeline launches its
  heavy stages (SFT, search, evaluation) on the first and its light ones on the second.
- `expert-iteration-round/round`: one round, given `model_uri` and `round`.
- `sbt-evaluate-latest/nightly`: evaluates the newest model of a run dir; a cron schedule
  (03:00 UTC), registered paused-free but inactive unless `--nightly` is given.

Work pools are created when missing: `process` (a GPU box running `prefect worker start`),
`docker` (GPU through `container_create_kwargs.device_requests`) or `kubernetes` (the default
job manifest with an `nvidia.com/gpu` limit). The same set is written out statically in
`deployments/prefect.yaml` for `prefect deploy --all`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE_WORKDIR = "/opt/sbt"  # where docker/Dockerfile.* put the project
POOL_TYPES = ("process", "docker", "kubernetes")
NIGHTLY_CRON = "0 3 * * *"


def _bundled_template(pool_type: str) -> dict:
    """The default base job template Prefect ships for a worker type (no worker package needed)."""
    import prefect.server.api as api

    views = Path(api.__file__).parent / "collections_data" / "views" / "aggregate-worker-metadata.json"
    workers = json.loads(views.read_text())
    for collection in workers.values():
        for worker in collection.values():
            if worker.get("type") == pool_type:
                return copy.deepcopy(worker["default_base_job_configuration"])
    raise ValueError(f"Prefect ships no job template for pool type {pool_type!r}")


def base_job_template(pool_type: str, gpu: bool) -> dict:
    """The pool's job template; GPU pools ask the container runtime for GPUs."""
    if pool_type not in POOL_TYPES:
        raise ValueError(f"pool type must be one of {POOL_TYPES}, not {pool_type!r}")
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    template = _bundled_template(pool_type)
    if not gpu:
        return template
    props = template["variables"]["properties"]
    if pool_type == "docker":
        props["container_create_kwargs"] = {
            "title": "Container create kwargs", "type": "object",
            "description": "Extra docker-py containers.create arguments; the default asks for every GPU.",
            "default": {"device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]},
        }
        template["job_configuration"]["container_create_kwargs"] = "{{ container_create_kwargs }}"
    else:  # kubernetes
        props["gpu_limit"] = {"title": "GPUs", "type": "integer", "default": 1,
                              "description": "nvidia.com/gpu limit of the job's container."}
        container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_limit }}"
    return template


def deployment_specs(config: dict, run_dir: str, gpu_pool: str, cpu_pool: str, image: str | None,
                     nightly: bool = False) -> list[dict[str, Any]]:
    """What `register` creates, as plain data (also what prefect.yaml spells out)."""
    job = {"image": image} if image else {}
    common = {"config": config, "run_dir": run_dir}
    return [
        {"entrypoint": "flows/pipeline.py:pipeline", "name": "pipeline", "pool": gpu_pool, "job_variables": job,
         "parameters": common, "tags": ["sbt", "pipeline"]},
        {"entrypoint": "flows/pipeline.py:stage_flow", "name": "gpu", "pool": gpu_pool, "job_variables": job,
         "parameters": {}, "tags": ["sbt", "stage", "gpu"]},
        {"entrypoint": "flows/pipeline.py:stage_flow", "name": "cpu", "pool": cpu_pool, "job_variables": job,
         "parameters": {}, "tags": ["sbt", "stage", "cpu"]},
        {"entrypoint": "flows/pipeline.py:expert_iteration_round", "name": "round", "pool": gpu_pool,
         "job_variables": job, "parameters": common, "tags": ["sbt", "expert-iteration"]},
        {"entrypoint": "flows/evaluate.py:evaluate_latest", "name": "nightly", "pool": gpu_pool, "job_variables": job,
         "parameters": common, "tags": ["sbt", "evaluation", "nightly"],
         "schedule": {"cron": NIGHTLY_CRON, "timezone": "UTC", "active": nightly}},
    ]


def _load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    path, name = entrypoint.split(":")
    return load_flow_from_entrypoint(f"{ROOT / path}:{name}")


RESULTS_BLOCK = "sbt-results"


def register(config: dict, run_dir: str, *, pool_type: str = "process", gpu_pool: str = "sbt-gpu",
             cpu_pool: str = "sbt-cpu", image: str | None = None, nightly: bool = False,
             workdir: str | None = None, result_storage: str | None = None,
             storage_block: str | None = None) -> dict[str, str]:
    """Create the pools if missing and (re)create every deployment; returns {flow/deployment: id}.

    `result_storage` (e.g. s3://bucket/prefect-results) saves a `remote-file-system/sbt-results`
    block and makes every deployment's flow runs persist their results there. `storage_block`
    names a RemoteFileSystem block whose settings hold the S3 credentials (SBT_STORAGE_BLOCK).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    if pool_type != "process" and not image:
        raise ValueError(f"a {pool_type} pool runs an image: pass --image (see docker/)")
    workdir = workdir or (str(ROOT) if pool_type == "process" else IMAGE_WORKDIR)
    env = {}
    if result_storage:
        from prefect.filesystems import RemoteFileSystem

        RemoteFileSystem(basepath=result_storage).save(RESULTS_BLOCK, overwrite=True)
        env.update(PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
                   PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=f"remote-file-system/{RESULTS_BLOCK}")
    if storage_block:
        env["SBT_STORAGE_BLOCK"] = storage_block
    ids = {}
    with get_client(sync_client=True) as client:
        for pool, gpu in ((gpu_pool, True), (cpu_pool, False)):
            try:
                existing = client.read_work_pool(pool)
                if existing.type != pool_type:
                    raise ValueError(f"work pool {pool!r} exists with type {existing.type!r}, not {pool_type!r}")
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type,
                                                       base_job_template=base_job_template(pool_type, gpu)))
        for spec in deployment_specs(config, run_dir, gpu_pool, cpu_pool, image, nightly):
            flow = _load_flow(spec["entrypoint"])
            schedules = []
            if "schedule" in spec:
                s = spec["schedule"]
                schedules = [DeploymentScheduleCreate(schedule=CronSchedule(cron=s["cron"], timezone=s["timezone"]),
                                                      active=s["active"])]
            deployment_id = client.create_deployment(
                flow_id=client.create_flow_from_name(flow.name),
                name=spec["name"],
                entrypoint=spec["entrypoint"],
                work_pool_name=spec["pool"],
                job_variables={**spec["job_variables"], **({"env": env} if env else {})},
                parameters=spec["parameters"],
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                enforce_parameter_schema=True,
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}],
                tags=spec["tags"],
                schedules=schedules,
                description=(flow.description or "").strip().splitlines()[0] if flow.description else None,
            )
            ids[f"{flow.name}/{spec['name']}"] = str(deployment_id)
    return ids
