"""Which GPU an actor lands on, and how much memory it has.

Train workers go to the node type that advertises `train_node`, Serve replicas to the one that
advertises `serve_node` (`cluster.yaml`'s `available_node_types.<type>.resources`); the GPU is read
from the node type's instance type. `resources.gpu_memory_gb` overrides both (every GPU that size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3_ray.config import S3Config

# Instance type (prefix) -> (GPU, GiB per GPU as the driver reports it).
INSTANCE_GPUS: dict[str, tuple[str, float]] = {
    "p4d.": ("A100 40GB", 40.0),
    "p4de.": ("A100 80GB", 80.0),
    "p5.": ("H100 80GB", 79.6),
    "p5e.": ("H200 141GB", 140.4),
    "p5en.": ("H200 141GB", 140.4),
    "p3.": ("V100 16GB", 16.0),
    "p3dn.": ("V100 32GB", 32.0),
    "g4dn.": ("T4 16GB", 15.0),
    "g5.": ("A10G 24GB", 22.5),
    "g6.": ("L4 24GB", 22.5),
    "g6e.": ("L40S 48GB", 45.0),
    "a2-highgpu": ("A100 40GB", 40.0),  # GCP
    "a2-ultragpu": ("A100 80GB", 80.0),
    "a3-highgpu": ("H100 80GB", 79.6),
    "g2-standard": ("L4 24GB", 22.5),
}
ROLE_RESOURCE = {"train": "train_node", "serve": "serve_node"}


def cluster_file(cfg: S3Config) -> Path | None:
    """`resources.cluster`, else ./cluster.yaml, else the project's own (None when none exists)."""
    if cfg.resources.cluster:
        return Path(cfg.resources.cluster).expanduser()
    for candidate in (Path.cwd() / "cluster.yaml", Path(__file__).resolve().parents[2] / "cluster.yaml"):
        if candidate.is_file():
            return candidate
    return None


def instance_gpu(instance_type: str) -> tuple[str, float] | None:
    """(GPU, GiB) of a cloud instance type, or None for one without a known GPU.

    >>> instance_gpu("p4d.24xlarge"), instance_gpu("m6i.4xlarge")
    (('A100 40GB', 40.0), None)
    """
    for prefix in sorted(INSTANCE_GPUS, key=len, reverse=True):
        if instance_type.startswith(prefix):
            return INSTANCE_GPUS[prefix]
    return None


def node_gpus(path: Path) -> dict[str, dict[str, Any]]:
    """{node type: {"gpu", "gpu_memory_gib", "resources", "instance"}} for the GPU node types of a cluster file."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, node in (data.get("available_node_types") or {}).items():
        instance = str((node.get("node_config") or {}).get("InstanceType") or (node.get("node_config") or {})
                       .get("machineType") or "")
        found = instance_gpu(instance)
        if found:
            out[name] = {"gpu": found[0], "gpu_memory_gib": found[1], "instance": instance,
                         "resources": dict(node.get("resources") or {})}
    return out


def gpu_for(cfg: S3Config, role: str, problems: list[str]) -> dict[str, Any]:
    """The GPU an actor of `role` ("train" or "serve") lands on: {"gpu", "gpu_memory_gib", "node_type"}.
    An unknown GPU is {"gpu": "unknown", "gpu_memory_gib": None} and a problem naming what to set."""
    if cfg.resources.gpu_memory_gb is not None:
        gib = float(cfg.resources.gpu_memory_gb)
        return {"gpu": f"{gib:g} GiB GPU (resources.gpu_memory_gb)", "gpu_memory_gib": gib, "node_type": None}
    path = cluster_file(cfg)
    if path is None or not path.is_file():
        problems.append(f"memory: no cluster file ({path or 'cluster.yaml'}) to tell the GPUs; set "
                        "resources.gpu_memory_gb or resources.cluster")
        return {"gpu": "unknown", "gpu_memory_gib": None, "node_type": None}
    nodes = node_gpus(path)
    key = ROLE_RESOURCE[role]
    tagged = {n: v for n, v in nodes.items() if key in v["resources"]}
    pool = tagged or nodes
    if not pool:
        problems.append(f"memory: {path} names no node type with a known GPU instance type; set "
                        "resources.gpu_memory_gb")
        return {"gpu": "unknown", "gpu_memory_gib": None, "node_type": None}
    name = min(pool, key=lambda n: pool[n]["gpu_memory_gib"])  # untagged: the smallest GPU any may land on
    return {"gpu": pool[name]["gpu"], "gpu_memory_gib": pool[name]["gpu_memory_gib"], "node_type": name}
