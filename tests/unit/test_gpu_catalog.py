"""GPU catalogue: shipped data, lookups, user files, validation errors and MIG layouts."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from slmpack.catalog.gpus import (
    GpuCatalog,
    _shipped_document,
    default_gpu_catalog,
    load_gpu_catalog,
    mig_layouts,
    normalize_product,
    parse_gpu_document,
)
from slmpack.catalog.types import GPUSpec
from slmpack.errors import CatalogError

MIB = 1024**2

EXPECTED_PRODUCTS = {
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-H100-NVL",
    "NVIDIA-H100",
    "NVIDIA-H200",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-A100-SXM4-40GB",
    "NVIDIA-A100-80GB-PCIe",
    "NVIDIA-L40S",
    "NVIDIA-L4",
    "NVIDIA-A10G",
    "Tesla-T4",
}


@pytest.fixture(scope="module")
def catalog() -> GpuCatalog:
    return default_gpu_catalog()


def _one_gpu_doc(**overrides: Any) -> dict[str, Any]:
    """A valid one-GPU document built from the shipped A100-40GB entry."""
    entry = copy.deepcopy(_shipped_document()["gpus"]["NVIDIA-A100-SXM4-40GB"])
    entry.update(overrides)
    return {"schema_version": 1, "gpus": {"Test-GPU": entry}}


def _layout_counter(layout: tuple[str, ...]) -> Counter[str]:
    return Counter(layout)


# --- shipped data -------------------------------------------------------------------------


def test_every_expected_product_loads(catalog: GpuCatalog) -> None:
    assert set(catalog.products()) == EXPECTED_PRODUCTS


@pytest.mark.parametrize("product", sorted(EXPECTED_PRODUCTS))
def test_every_product_has_sane_figures_and_sources(catalog: GpuCatalog, product: str) -> None:
    gpu = catalog.get(product)
    assert gpu.product == product
    assert 10 * 1024**3 < gpu.memory_bytes < 160 * 1024**3
    assert 2e11 < gpu.memory_bandwidth_bytes_per_s < 6e12
    assert 5e13 < gpu.bf16_dense_flops < 1.2e15
    assert 0 < gpu.idle_watts < gpu.tdp_watts <= 700
    assert gpu.family in {"hopper", "ampere", "ada-lovelace", "turing"}
    assert len(gpu.sources) >= 7
    for profile in gpu.mig_profiles:
        assert profile.memory_bytes <= gpu.memory_bytes
        assert profile.sm_count <= gpu.sm_count


def test_h100_80gb_figures_match_datasheet(catalog: GpuCatalog) -> None:
    gpu = catalog.get("NVIDIA-H100-80GB-HBM3")
    assert gpu.memory_bytes == 81559 * MIB
    assert gpu.memory_bandwidth_bytes_per_s == pytest.approx(3.35e12)
    # Dense, not the 1,979 TFLOPS sparsity figure.
    assert gpu.bf16_dense_flops == pytest.approx(989.4e12)
    assert gpu.fp8_dense_flops == pytest.approx(1978.9e12)
    assert gpu.sm_count == 132
    assert gpu.tdp_watts == 700


def test_paper_h100_64gb_is_the_plain_h100_label(catalog: GpuCatalog) -> None:
    gpu = catalog.get("NVIDIA-H100-64GB-HBM2e")
    assert gpu.product == "NVIDIA-H100"
    assert gpu.memory_bytes == 65247 * MIB
    assert not gpu.mig_capable


def test_gpus_without_fp8_report_zero(catalog: GpuCatalog) -> None:
    for product in ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A10G", "Tesla-T4"):
        assert catalog.get(product).fp8_dense_flops == 0.0
    assert catalog.get("NVIDIA-L4").fp8_dense_flops > 0


def test_mig_capability(catalog: GpuCatalog) -> None:
    mig = {p for p in catalog.products() if catalog.get(p).mig_capable}
    assert mig == {
        "NVIDIA-H100-80GB-HBM3",
        "NVIDIA-H100-NVL",
        "NVIDIA-H200",
        "NVIDIA-A100-SXM4-80GB",
        "NVIDIA-A100-SXM4-40GB",
        "NVIDIA-A100-80GB-PCIe",
    }


@pytest.mark.parametrize(
    ("product", "names"),
    [
        (
            "NVIDIA-A100-SXM4-40GB",
            ["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"],
        ),
        (
            "NVIDIA-H100-80GB-HBM3",
            ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
        ),
        (
            "NVIDIA-H200",
            ["1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"],
        ),
    ],
)
def test_mig_profile_names(catalog: GpuCatalog, product: str, names: list[str]) -> None:
    assert [p.name for p in catalog.get(product).mig_profiles] == names


def test_mig_profile_details_h100(catalog: GpuCatalog) -> None:
    gpu = catalog.get("h100")
    p = gpu.mig_profile("3g.40gb")
    assert (p.compute_slices, p.memory_slices, p.max_instances) == (3, 4, 2)
    assert p.placements == (0, 4)
    assert p.sm_count == 60
    assert p.memory_bytes == int(39.5 * 1024) * MIB
    assert p.resource_name == "nvidia.com/mig-3g.40gb"
    with pytest.raises(CatalogError, match=r"5g\.50gb"):
        gpu.mig_profile("5g.50gb")


# --- lookups --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "product"),
    [
        ("h100", "NVIDIA-H100-80GB-HBM3"),
        ("H100-80GB", "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
        ("nvidia-h100-80gb-hbm3", "NVIDIA-H100-80GB-HBM3"),
        ("a100-40gb", "NVIDIA-A100-SXM4-40GB"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA-A100-80GB-PCIe"),
        ("l4", "NVIDIA-L4"),
        ("L40S", "NVIDIA-L40S"),
        ("t4", "Tesla-T4"),
        ("Tesla T4", "Tesla-T4"),
        ("h200", "NVIDIA-H200"),
        ("NVIDIA H100", "NVIDIA-H100"),
    ],
)
def test_aliases_resolve(catalog: GpuCatalog, name: str, product: str) -> None:
    assert catalog.get(name).product == product
    assert name in catalog


@pytest.mark.parametrize(
    ("label", "product"),
    [
        ("NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-H100-80GB-HBM3"),
        ("Tesla-T4-SHARED", "Tesla-T4"),
        ("NVIDIA-L4-shared", "NVIDIA-L4"),
    ],
)
def test_shared_suffix_is_stripped(catalog: GpuCatalog, label: str, product: str) -> None:
    assert catalog.get(label).product == product


def test_normalize_product() -> None:
    assert normalize_product(" NVIDIA H100 80GB HBM3 ") == "nvidia-h100-80gb-hbm3"
    assert normalize_product("Tesla_T4-SHARED") == "tesla-t4"


def test_unknown_gpu_lists_closest_names(catalog: GpuCatalog) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.get("NVIDIA-H100-80GB-HBM")
    message = str(err.value)
    assert "unknown GPU 'NVIDIA-H100-80GB-HBM'" in message
    assert "closest known: NVIDIA-H100-80GB-HBM3" in message


def test_unknown_gpu_without_close_match_lists_all(catalog: GpuCatalog) -> None:
    with pytest.raises(CatalogError, match=r"known: .*Tesla-T4"):
        catalog.get("zz")


# --- user files -------------------------------------------------------------------------------


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_user_file_adds_a_gpu(tmp_path: Path) -> None:
    doc = _one_gpu_doc(aliases=["my-gpu"], mig=None)
    catalog = load_gpu_catalog([_write(tmp_path / "mine.yaml", doc)])
    assert catalog.get("my-gpu").product == "Test-GPU"
    assert "NVIDIA-L4" in catalog.products()  # shipped entries stay


def test_user_file_overrides_a_shipped_gpu(tmp_path: Path) -> None:
    doc = _one_gpu_doc(memory_mib=40000, mig=None, aliases=["a100-40gb"])
    doc["gpus"] = {"NVIDIA-A100-SXM4-40GB": doc["gpus"]["Test-GPU"]}
    catalog = load_gpu_catalog([_write(tmp_path / "override.yaml", doc)])
    gpu = catalog.get("a100-40gb")
    assert gpu.memory_bytes == 40000 * MIB
    assert not gpu.mig_capable
    assert default_gpu_catalog().get("a100-40gb").memory_bytes == 40960 * MIB


def test_missing_user_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope\.yaml"):
        load_gpu_catalog([tmp_path / "nope.yaml"])


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("gpus: [unclosed", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"broken\.yaml: not valid YAML"):
        load_gpu_catalog([path])


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field_text"),
    [
        ({"memory_mib": -1}, "field memory_mib"),
        ({"memory_bandwidth_gb_per_s": "fast"}, "field memory_bandwidth_gb_per_s"),
        ({"idle_watts": 500}, "idle_watts=500.0 must be below tdp_watts"),
        ({"family": "hoper"}, "family 'hoper'"),
        ({"colour": "green"}, "field colour"),
    ],
)
def test_invalid_gpu_data_names_file_gpu_and_field(
    overrides: dict[str, Any], field_text: str
) -> None:
    with pytest.raises(CatalogError) as err:
        parse_gpu_document(_one_gpu_doc(**overrides), origin="user.yaml")
    message = str(err.value)
    assert message.startswith("user.yaml: GPU 'Test-GPU': ")
    assert field_text in message


def test_missing_source_citation_is_rejected() -> None:
    doc = _one_gpu_doc()
    del doc["gpus"]["Test-GPU"]["source"]["tdp_watts"]
    with pytest.raises(CatalogError, match="missing a citation for: tdp_watts"):
        parse_gpu_document(doc, origin="user.yaml")


def _with_profile(**changes: Any) -> dict[str, Any]:
    doc = _one_gpu_doc()
    profile = doc["gpus"]["Test-GPU"]["mig"]["profiles"][4]  # 3g.20gb
    profile.update(changes)
    return doc


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"memory_mib": 50000}, "exceeds the GPU's memory_mib"),
        ({"placements": [0, 5]}, "does not fit in 8 memory slices"),
        ({"max_instances": 3}, "exceeds the non-overlapping placements"),
        ({"compute_slices": 9}, "compute_slices"),
        ({"name": "4g.20gb"}, "does not match compute_slices=3"),
    ],
)
def test_invalid_mig_profiles_are_rejected(changes: dict[str, Any], text: str) -> None:
    with pytest.raises(CatalogError, match="mig") as err:
        parse_gpu_document(_with_profile(**changes), origin="user.yaml")
    assert text in str(err.value)


def test_document_without_gpus_mapping_is_rejected() -> None:
    with pytest.raises(CatalogError, match="'gpus:' mapping"):
        parse_gpu_document({"gpu": {}}, origin="user.yaml")


# --- MIG layouts -----------------------------------------------------------------------------


def _layouts(catalog: GpuCatalog, product: str) -> set[tuple[str, ...]]:
    return set(mig_layouts(catalog.get(product)))


def test_a100_40gb_known_layouts(catalog: GpuCatalog) -> None:
    layouts = _layouts(catalog, "NVIDIA-A100-SXM4-40GB")
    expected_valid = [
        ("7g.40gb",),
        ("1g.5gb",) * 7,
        ("1g.5gb", "2g.10gb", "4g.20gb"),
        ("1g.5gb", "1g.5gb", "1g.5gb", "4g.20gb"),
        ("3g.20gb", "3g.20gb"),
        ("3g.20gb", "4g.20gb"),
        ("2g.10gb", "2g.10gb", "3g.20gb"),
        ("1g.5gb", "2g.10gb", "2g.10gb", "2g.10gb"),
        ("1g.10gb",) * 4,
    ]
    for layout in expected_valid:
        assert tuple(sorted(layout)) in layouts, layout


def test_a100_40gb_invalid_combinations_are_absent(catalog: GpuCatalog) -> None:
    layouts = _layouts(catalog, "NVIDIA-A100-SXM4-40GB")
    for layout in layouts:
        counts = _layout_counter(layout)
        assert counts["4g.20gb"] <= 1  # only placement 0
        assert counts["7g.40gb"] == 0 or len(layout) == 1
        assert counts["2g.10gb"] <= 3
    # 3g.20gb + 2g.10gb leaves room for a 1g instance, so it is not maximal.
    assert ("2g.10gb", "3g.20gb") not in layouts


def test_layouts_respect_compute_and_memory(catalog: GpuCatalog) -> None:
    for product in catalog.products():
        gpu = catalog.get(product)
        by_name = {p.name: p for p in gpu.mig_profiles}
        for layout in mig_layouts(gpu):
            assert layout == tuple(sorted(layout))
            assert sum(by_name[n].compute_slices for n in layout) <= 7
            assert sum(by_name[n].memory_slices for n in layout) <= 8
            assert not any(n.endswith("+me") for n in layout)


def test_layouts_are_maximal(catalog: GpuCatalog) -> None:
    """No layout is a strict sub-multiset of another."""
    layouts = [_layout_counter(layout) for layout in mig_layouts(catalog.get("h100"))]
    for a in layouts:
        for b in layouts:
            if a != b:
                assert not (a <= b), (a, b)


def test_same_geometry_gives_same_layout_count(catalog: GpuCatalog) -> None:
    counts = {len(mig_layouts(catalog.get(p))) for p in catalog.products()}
    counts.discard(0)
    assert counts == {28}


def test_media_extension_profiles_are_opt_in(catalog: GpuCatalog) -> None:
    gpu = catalog.get("h100")
    with_me = mig_layouts(gpu, include_media_extensions=True)
    assert any("1g.10gb+me" in layout for layout in with_me)
    for layout in with_me:
        assert _layout_counter(layout)["1g.10gb+me"] <= 1


def test_gpu_without_mig_has_no_layouts(catalog: GpuCatalog) -> None:
    assert mig_layouts(catalog.get("l4")) == ()


def test_placements_decide_layouts() -> None:
    """A profile that may only start at 0 cannot appear twice even if memory allows."""
    doc = _one_gpu_doc()
    spec: GPUSpec = parse_gpu_document(doc, origin="t")["Test-GPU"]
    layouts = set(mig_layouts(spec))
    assert ("4g.20gb", "4g.20gb") not in layouts
    assert ("3g.20gb", "3g.20gb") in layouts
