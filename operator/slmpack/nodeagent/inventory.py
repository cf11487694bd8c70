"""The GPU inventory of a node, as the node agent publishes it in the node annotation
``slmpack.dev/gpu-inventory``, and the parser the operator reads it back with.

Pure: no NVML, Kubernetes or Prometheus imports, so the operator can import this module alone.

Format (compact JSON, keys sorted; docs/nodeagent.md has an example)::

    {"cudaVersion": "12.4", "driverVersion": "550.90.07", "gpus": [
      {"index": 0, "memoryBytes": 42949672960, "migMode": "enabled",
       "migDevices": [{"computeInstanceId": 0, "gpuInstanceId": 1, "memoryBytes": ...,
                       "profile": "3g.20gb", "uuid": "MIG-..."}],
       "product": "NVIDIA-A100-SXM4-40GB", "uuid": "GPU-..."}],
     "schemaVersion": 1}

``schemaVersion`` changes only when a field changes meaning; fields may be added without it,
and readers ignore fields they do not know. Only what changes with the hardware or the driver
is in it (never usage), so the agent writes it when a GPU, MIG layout or driver changes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slmpack.nodeagent.readings import MigMode, NodeReading

#: The node annotation the agent writes.
ANNOTATION_KEY = "slmpack.dev/gpu-inventory"
#: Version of the annotation's format (see the module docstring).
SCHEMA_VERSION = 1

# GPU Feature Discovery's sanitise() (k8s-device-plugin internal/lm/resource.go): drop every
# character outside [A-Za-z0-9-_. ], then join the words with "-".
_GFD_DROPPED = re.compile(r"[^A-Za-z0-9\-_. ]")

_MIB_BYTES = 1024**2
_GIB_BYTES = 1024**3
# go-nvlib's getMigMemorySizeGB rounds an instance's share of the GPU up to eighths.
_MIG_MEMORY_FRACTION_DENOMINATOR = 8


def gfd_product_name(nvml_name: str) -> str:
    """The ``nvidia.com/gpu.product`` label GPU Feature Discovery writes for an NVML device
    name: "NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3" (case kept, as GFD does; the
    catalogue's `normalize_product` matches it)."""
    return "-".join(_GFD_DROPPED.sub("", nvml_name).split())


def mig_memory_gb(memory_mib: int, device_memory_bytes: int) -> int:
    """The "<N>gb" of a MIG profile name, computed as go-nvlib does (pkg/nvlib/device,
    getMigMemorySizeGB): the instance's share of the GPU's memory rounded up to eighths, times
    the GPU's memory in whole GiB, rounded. 40448 MiB of an 80 GB H100 -> 40."""
    fraction = memory_mib * _MIB_BYTES / device_memory_bytes
    eighths = math.ceil(fraction * _MIG_MEMORY_FRACTION_DENOMINATOR)
    total_gb = -(-device_memory_bytes // _GIB_BYTES)  # ceiling
    # Go's math.Round rounds halves away from zero; Python's round() would go to even.
    return math.floor(eighths * total_gb / _MIG_MEMORY_FRACTION_DENOMINATOR + 0.5)


def mig_profile_name(
    *,
    gpu_slices: int,
    compute_slices: int,
    memory_mib: int,
    device_memory_bytes: int,
    suffix: str = "",
) -> str:
    """The profile name the device plugin and GFD use: "3g.40gb", "1c.3g.40gb" for a compute
    instance smaller than its GPU instance, plus a suffix such as "+me" (media extensions)."""
    gb = mig_memory_gb(memory_mib, device_memory_bytes)
    base = f"{gpu_slices}g.{gb}gb"
    if compute_slices != gpu_slices:
        base = f"{compute_slices}c.{base}"
    return base + suffix


def format_cuda_version(version: int) -> str:
    """``nvmlSystemGetCudaDriverVersion`` encodes 12.4 as 12040."""
    return f"{version // 1000}.{version % 1000 // 10}"


@dataclass(frozen=True)
class MigDeviceInventory:
    gpu_instance_id: int
    compute_instance_id: int
    profile: str | None
    uuid: str
    memory_bytes: int | None


@dataclass(frozen=True)
class GpuInventory:
    index: int
    uuid: str
    product: str | None  # GFD's nvidia.com/gpu.product spelling; None if NVML gave no name
    memory_bytes: int | None
    mig_mode: MigMode
    mig_devices: tuple[MigDeviceInventory, ...] = ()


@dataclass(frozen=True)
class NodeGpuInventory:
    schema_version: int
    driver_version: str | None
    cuda_version: str | None
    gpus: tuple[GpuInventory, ...]

    @property
    def products(self) -> tuple[str, ...]:
        """Distinct products on the node, in GPU order."""
        return tuple(dict.fromkeys(g.product for g in self.gpus if g.product))


class InventoryFormatError(ValueError):
    """The annotation is not an inventory this version can read."""


def inventory_from_reading(reading: NodeReading) -> NodeGpuInventory:
    """The hardware part of a reading (nothing that changes with use)."""
    return NodeGpuInventory(
        schema_version=SCHEMA_VERSION,
        driver_version=reading.driver_version,
        cuda_version=reading.cuda_driver_version,
        gpus=tuple(
            GpuInventory(
                index=gpu.index,
                uuid=gpu.uuid,
                product=gfd_product_name(gpu.name) if gpu.name else None,
                memory_bytes=gpu.memory_total_bytes,
                mig_mode=gpu.mig_mode,
                mig_devices=tuple(
                    MigDeviceInventory(
                        gpu_instance_id=mig.gpu_instance_id,
                        compute_instance_id=mig.compute_instance_id,
                        profile=mig.profile,
                        uuid=mig.uuid,
                        memory_bytes=mig.memory_total_bytes,
                    )
                    for mig in sorted(
                        gpu.mig_devices, key=lambda m: (m.gpu_instance_id, m.compute_instance_id)
                    )
                ),
            )
            for gpu in sorted(reading.gpus, key=lambda g: g.index)
        ),
    )


def _gpu_document(gpu: GpuInventory) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "product": gpu.product,
        "memoryBytes": gpu.memory_bytes,
        "migMode": gpu.mig_mode.value,
    }
    if gpu.mig_devices:
        doc["migDevices"] = [
            {
                "gpuInstanceId": m.gpu_instance_id,
                "computeInstanceId": m.compute_instance_id,
                "profile": m.profile,
                "uuid": m.uuid,
                "memoryBytes": m.memory_bytes,
            }
            for m in _mig_order(gpu.mig_devices)
        ]
    return doc


def _mig_order(devices: tuple[MigDeviceInventory, ...]) -> list[MigDeviceInventory]:
    return sorted(devices, key=lambda m: (m.gpu_instance_id, m.compute_instance_id))


def annotation_value(inventory: NodeGpuInventory) -> str:
    """The annotation's value: compact JSON with sorted keys, so equal inventories give equal
    strings and the agent can tell a change by comparing them."""
    doc = {
        "schemaVersion": inventory.schema_version,
        "driverVersion": inventory.driver_version,
        "cudaVersion": inventory.cuda_version,
        "gpus": [_gpu_document(g) for g in sorted(inventory.gpus, key=lambda g: g.index)],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _opt_int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InventoryFormatError(f"{key} must be an integer, got {value!r}")
    return value


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = _opt_int(doc, key)
    if value is None:
        raise InventoryFormatError(f"{key} is missing")
    return value


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InventoryFormatError(f"{key} must be a string, got {value!r}")
    return value


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = _opt_str(doc, key)
    if value is None:
        raise InventoryFormatError(f"{key} is missing")
    return value


def _objects(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = doc.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise InventoryFormatError(f"{key} must be a list of objects")
    return items


def _mig_mode(value: str | None) -> MigMode:
    try:
        return MigMode(value or MigMode.UNKNOWN.value)
    except ValueError:
        return MigMode.UNKNOWN  # a mode a newer agent knows; not a reason to drop the GPU


def inventory_from_json(text: str) -> NodeGpuInventory:
    """Parse an annotation value; raises InventoryFormatError if it is not one this version
    reads (bad JSON, a newer schemaVersion, a field of the wrong type)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise InventoryFormatError(f"not JSON: {err}") from err
    if not isinstance(doc, Mapping):
        raise InventoryFormatError("not a JSON object")
    version = _int(doc, "schemaVersion")
    if version != SCHEMA_VERSION:
        raise InventoryFormatError(
            f"schemaVersion {version} is not {SCHEMA_VERSION}: upgrade the operator and the "
            "node agent together"
        )
    return NodeGpuInventory(
        schema_version=version,
        driver_version=_opt_str(doc, "driverVersion"),
        cuda_version=_opt_str(doc, "cudaVersion"),
        gpus=tuple(
            GpuInventory(
                index=_int(gpu, "index"),
                uuid=_str(gpu, "uuid"),
                product=_opt_str(gpu, "product"),
                memory_bytes=_opt_int(gpu, "memoryBytes"),
                mig_mode=_mig_mode(_opt_str(gpu, "migMode")),
                mig_devices=tuple(
                    MigDeviceInventory(
                        gpu_instance_id=_int(mig, "gpuInstanceId"),
                        compute_instance_id=_int(mig, "computeInstanceId"),
                        profile=_opt_str(mig, "profile"),
                        uuid=_str(mig, "uuid"),
                        memory_bytes=_opt_int(mig, "memoryBytes"),
                    )
                    for mig in _objects(gpu, "migDevices")
                ),
            )
            for gpu in _objects(doc, "gpus")
        ),
    )


def parse_inventory_annotation(node: Mapping[str, Any]) -> NodeGpuInventory | None:
    """The inventory the node agent published on a Node (as a dict from the API), or None
    when the node has none or one this version cannot read (the operator then falls back to
    GPU Feature Discovery's labels)."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ANNOTATION_KEY)
    if not isinstance(text, str):
        return None
    try:
        return inventory_from_json(text)
    except InventoryFormatError:
        return None
