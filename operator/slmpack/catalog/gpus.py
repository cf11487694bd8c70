"""GPU catalogue: the shipped ``gpus.yaml`` plus optional user files, as ``GPUSpec`` records.

Keys are the strings GPU Feature Discovery writes to ``nvidia.com/gpu.product``. Lookups are
case-insensitive, accept aliases and nvidia-smi spellings ("NVIDIA H100 80GB HBM3"), and
ignore the ``-SHARED`` suffix that GPU time-slicing appends to the product label.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmpack.catalog.types import GPUSpec, MigProfile
from slmpack.errors import CatalogError

MIB_BYTES = 1024**2
GB_BYTES = 1000**3  # datasheet bandwidths are decimal GB/s
TFLOPS = 1e12

#: Suffix GPU time-slicing (``renameByDefault``) appends to ``nvidia.com/gpu.product``.
SHARED_SUFFIX = "-shared"

#: Numeric GPU fields; each must cite a source.
SOURCED_FIELDS = (
    "memory_mib",
    "memory_bandwidth_gb_per_s",
    "bf16_dense_tflops",
    "fp8_dense_tflops",
    "sm_count",
    "tdp_watts",
    "idle_watts",
)

# GFD's nvidia.com/gpu.family values (from the CUDA compute capability).
KNOWN_FAMILIES = frozenset(
    {
        "kepler",
        "maxwell",
        "pascal",
        "volta",
        "turing",
        "ampere",
        "ada-lovelace",
        "hopper",
        "blackwell",
    }
)


class _MigProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[1-8]g\.[0-9]+gb(\+me)?$")
    memory_mib: int = Field(gt=0)
    compute_slices: int = Field(ge=1, le=8)
    memory_slices: int = Field(ge=1, le=8)
    max_instances: int = Field(ge=1, le=8)
    placements: tuple[int, ...] = Field(min_length=1)
    sm_count: int = Field(gt=0)

    @model_validator(mode="after")
    def _check_consistency(self) -> _MigProfileModel:
        if not self.name.startswith(f"{self.compute_slices}g."):
            raise ValueError(
                f"name {self.name!r} does not match compute_slices={self.compute_slices}"
            )
        if len(set(self.placements)) != len(self.placements):
            raise ValueError(f"placements {list(self.placements)} repeat a start index")
        for start in self.placements:
            if start < 0 or start + self.memory_slices > 8:
                raise ValueError(
                    f"placement {start} with memory_slices={self.memory_slices} "
                    "does not fit in 8 memory slices"
                )
        # max_instances can be below the placement count (+me profiles: one per GPU) but
        # never above the number of non-overlapping placements.
        if self.max_instances > _max_disjoint(self.placements, self.memory_slices):
            raise ValueError(
                f"max_instances={self.max_instances} exceeds the non-overlapping "
                f"placements {list(self.placements)} of size {self.memory_slices}"
            )
        return self


class _MigTableModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1)
    profiles: tuple[_MigProfileModel, ...] = Field(min_length=1)


class _GpuModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    aliases: tuple[str, ...] = ()
    family: str
    memory_mib: int = Field(gt=0)
    memory_bandwidth_gb_per_s: float = Field(gt=0)
    bf16_dense_tflops: float = Field(gt=0)
    fp8_dense_tflops: float = Field(ge=0)
    sm_count: int = Field(gt=0)
    tdp_watts: float = Field(gt=0)
    idle_watts: float = Field(gt=0)
    source: dict[str, str]
    mig: _MigTableModel | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> _GpuModel:
        if self.family not in KNOWN_FAMILIES:
            raise ValueError(
                f"family {self.family!r} is not a GFD nvidia.com/gpu.family value "
                f"({', '.join(sorted(KNOWN_FAMILIES))})"
            )
        missing = [f for f in SOURCED_FIELDS if not self.source.get(f, "").strip()]
        if missing:
            raise ValueError(f"source is missing a citation for: {', '.join(missing)}")
        unknown = sorted(set(self.source) - set(SOURCED_FIELDS))
        if unknown:
            raise ValueError(f"source names unknown fields: {', '.join(unknown)}")
        if self.idle_watts >= self.tdp_watts:
            raise ValueError(f"idle_watts={self.idle_watts} must be below tdp_watts")
        if self.mig is not None:
            names = [p.name for p in self.mig.profiles]
            if len(set(names)) != len(names):
                raise ValueError(f"mig.profiles repeat a name: {names}")
            for p in self.mig.profiles:
                if p.memory_mib > self.memory_mib:
                    raise ValueError(
                        f"mig profile {p.name}: memory_mib={p.memory_mib} exceeds the "
                        f"GPU's memory_mib={self.memory_mib}"
                    )
                if p.sm_count > self.sm_count:
                    raise ValueError(
                        f"mig profile {p.name}: sm_count={p.sm_count} exceeds the "
                        f"GPU's sm_count={self.sm_count}"
                    )
        return self


def _max_disjoint(starts: Iterable[int], size: int) -> int:
    """Most intervals [start, start+size) that can coexist (greedy by start is optimal)."""
    count, free_from = 0, -1
    for start in sorted(starts):
        if start >= free_from:
            count += 1
            free_from = start + size
    return count


def normalize_product(name: str) -> str:
    """Lookup key: lower case, spaces/underscores as "-", time-slicing suffix removed.

    "NVIDIA H100 80GB HBM3" (nvidia-smi) and "NVIDIA-H100-80GB-HBM3-SHARED" (GFD with
    time-slicing) both become "nvidia-h100-80gb-hbm3".
    """
    key = "-".join(name.strip().lower().replace("_", " ").split())
    if key.endswith(SHARED_SUFFIX):
        key = key[: -len(SHARED_SUFFIX)]
    return key


def _to_spec(product: str, gpu: _GpuModel) -> GPUSpec:
    sources = [f"{field}: {gpu.source[field]}" for field in SOURCED_FIELDS]
    profiles: tuple[MigProfile, ...] = ()
    if gpu.mig is not None:
        sources.append(f"mig: {gpu.mig.source}")
        profiles = tuple(
            MigProfile(
                name=p.name,
                memory_bytes=p.memory_mib * MIB_BYTES,
                compute_slices=p.compute_slices,
                memory_slices=p.memory_slices,
                max_instances=p.max_instances,
                placements=tuple(sorted(p.placements)),
                sm_count=p.sm_count,
            )
            for p in gpu.mig.profiles
        )
    return GPUSpec(
        product=product,
        aliases=gpu.aliases,
        family=gpu.family,
        memory_bytes=gpu.memory_mib * MIB_BYTES,
        memory_bandwidth_bytes_per_s=gpu.memory_bandwidth_gb_per_s * GB_BYTES,
        bf16_dense_flops=gpu.bf16_dense_tflops * TFLOPS,
        fp8_dense_flops=gpu.fp8_dense_tflops * TFLOPS,
        sm_count=gpu.sm_count,
        tdp_watts=gpu.tdp_watts,
        idle_watts=gpu.idle_watts,
        mig_profiles=profiles,
        sources=tuple(sources),
    )


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(entry)"
        parts.append(f"field {loc}: {e['msg']}")
    return "; ".join(parts)


def parse_gpu_document(data: Any, *, origin: str) -> dict[str, GPUSpec]:
    """Validate one parsed GPU YAML document; ``origin`` names it in error messages."""
    if not isinstance(data, Mapping) or not isinstance(data.get("gpus"), Mapping):
        raise CatalogError(f"{origin}: expected a mapping with a 'gpus:' mapping at the top")
    version = data.get("schema_version", 1)
    if version != 1:
        raise CatalogError(f"{origin}: schema_version {version!r} is not supported (use 1)")
    unknown_top = sorted(set(data) - {"schema_version", "gpus"})
    if unknown_top:
        raise CatalogError(f"{origin}: unknown top-level keys: {', '.join(map(str, unknown_top))}")
    specs: dict[str, GPUSpec] = {}
    for product, entry in data["gpus"].items():
        if not isinstance(product, str) or not product.strip():
            raise CatalogError(f"{origin}: GPU key {product!r} must be a non-empty string")
        try:
            model = _GpuModel.model_validate(entry)
        except ValidationError as err:
            raise CatalogError(
                f"{origin}: GPU {product!r}: {_format_validation_error(err)}"
            ) from None
        specs[product] = _to_spec(product, model)
    return specs


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CatalogError(f"{path}: cannot read GPU catalogue file: {err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CatalogError(f"{path}: not valid YAML: {err}") from None


@dataclass(frozen=True)
class GpuCatalog:
    """Known GPUs by GFD product string. Build with :func:`load_gpu_catalog`."""

    gpus: Mapping[str, GPUSpec]
    # normalized product or alias -> product
    index: Mapping[str, str]

    @classmethod
    def from_specs(cls, specs: Iterable[GPUSpec]) -> GpuCatalog:
        """Index specs in order; a later spec with the same product replaces an earlier one,
        and a later alias takes the name over from an earlier product."""
        gpus: dict[str, GPUSpec] = {}
        for spec in specs:
            gpus[spec.product] = spec
        index: dict[str, str] = {}
        for spec in gpus.values():
            for alias in spec.aliases:
                index[normalize_product(alias)] = spec.product
        # Product keys win over aliases so a product string always finds itself.
        for spec in gpus.values():
            index[normalize_product(spec.product)] = spec.product
        return cls(gpus=gpus, index=index)

    def products(self) -> tuple[str, ...]:
        """GFD product strings, sorted."""
        return tuple(sorted(self.gpus))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_product(name) in self.index

    def get(self, name: str) -> GPUSpec:
        """Spec for a GFD product label, alias or nvidia-smi name.

        Raises CatalogError naming the closest known names when nothing matches.
        """
        key = normalize_product(name)
        product = self.index.get(key)
        if product is not None:
            return self.gpus[product]
        candidates = sorted(set(self.index) | {normalize_product(p) for p in self.gpus})
        close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.4)
        close_products = list(dict.fromkeys(self.index[c] for c in close))
        hint = (
            f"closest known: {', '.join(close_products)}"
            if close_products
            else f"known: {', '.join(self.products())}"
        )
        raise CatalogError(
            f"unknown GPU {name!r}; {hint}. Add it with a GPU catalogue file (see docs/catalog.md)."
        )


def _shipped_document() -> Any:
    text = resources.files("slmpack.catalog").joinpath("gpus.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_gpu_catalog(extra_files: Sequence[Path] = ()) -> GpuCatalog:
    """The shipped catalogue plus ``extra_files`` (same schema), applied in order.

    A GPU in an extra file whose product string is already known replaces that entry
    entirely (its aliases and MIG table included).
    """
    specs = list(
        parse_gpu_document(_shipped_document(), origin="slmpack/catalog/gpus.yaml").values()
    )
    for path in extra_files:
        specs.extend(parse_gpu_document(_read_yaml(Path(path)), origin=str(path)).values())
    return GpuCatalog.from_specs(specs)


@functools.cache
def default_gpu_catalog() -> GpuCatalog:
    """The shipped catalogue, parsed once per process."""
    return load_gpu_catalog()


# --- MIG layouts -------------------------------------------------------------------------


def mig_layouts(
    gpu: GPUSpec, *, include_media_extensions: bool = False
) -> tuple[tuple[str, ...], ...]:
    """Every maximal MIG layout of ``gpu``, each a sorted tuple of profile names.

    A layout is a set of GPU instances whose memory-slice ranges
    ``[start, start + memory_slices)`` (starts from the profile's valid placements) do not
    overlap, whose compute slices sum to at most the full-GPU profile's, and which respects
    each profile's ``max_instances``. It is maximal when no further instance of any profile
    fits. Layouts are compared as multisets of profile names: placements that give the same
    names are one layout. ``+me`` profiles differ from their base profile only in media
    engines, so they are left out unless ``include_media_extensions``.

    Returns ``()`` for a GPU without MIG. Sorted: most instances first, then by names.
    """
    profiles = [
        p for p in gpu.mig_profiles if include_media_extensions or not p.name.endswith("+me")
    ]
    if not profiles:
        return ()
    total_compute = max(p.compute_slices for p in profiles)
    total_memory = max(max(s + p.memory_slices for s in p.placements) for p in profiles)
    # (start, profile index) pairs; iterate in a fixed order so each set is seen once.
    slots = sorted((s, i) for i, p in enumerate(profiles) for s in p.placements)

    feasible: set[tuple[int, ...]] = set()  # count per profile index

    def visit(from_slot: int, used_mask: int, compute: int, counts: list[int]) -> None:
        feasible.add(tuple(counts))
        for k in range(from_slot, len(slots)):
            start, i = slots[k]
            p = profiles[i]
            mask = ((1 << p.memory_slices) - 1) << start
            if (
                used_mask & mask
                or compute + p.compute_slices > total_compute
                or counts[i] >= p.max_instances
                or start + p.memory_slices > total_memory
            ):
                continue
            counts[i] += 1
            visit(k + 1, used_mask | mask, compute + p.compute_slices, counts)
            counts[i] -= 1

    visit(0, 0, 0, [0] * len(profiles))

    def grown(counts: tuple[int, ...], i: int) -> tuple[int, ...]:
        return (*counts[:i], counts[i] + 1, *counts[i + 1 :])

    # Feasible sets are closed under removal, so a set is maximal iff adding any one
    # profile makes it infeasible.
    layouts = {
        tuple(sorted(name for p, n in zip(profiles, counts, strict=True) for name in [p.name] * n))
        for counts in feasible
        if any(counts) and not any(grown(counts, i) in feasible for i in range(len(profiles)))
    }
    return tuple(sorted(layouts, key=lambda layout: (-len(layout), layout)))
