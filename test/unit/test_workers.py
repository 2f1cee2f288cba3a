"""What each of the two test workers runs whole (test/conftest.py): a module that boots or uses the
3-node cluster anywhere but in the cluster's unit would boot a second one beside it, on the same ports."""

import ast
from pathlib import Path

from ..conftest import CLUSTER_UNIT, ROOT, unit_order, work_unit

E2E = ROOT / "test" / "e2e"


def uses_the_running_cluster(module: Path) -> bool:
    """A test or fixture of the module takes the session's `running` cluster: as an argument, or
    by name (`usefixtures("running")`, `request.getfixturevalue("running")`)."""
    tree = ast.parse(module.read_text())
    return any((isinstance(node, ast.FunctionDef) and "running" in [a.arg for a in node.args.args])
               or (isinstance(node, ast.Constant) and node.value == "running")
               for node in ast.walk(tree))


def test_every_module_on_the_running_cluster_is_in_the_clusters_unit_and_no_other_e2e_module_is():
    modules = sorted(E2E.glob("test_*.py"))
    on_cluster = {m.name for m in modules if uses_the_running_cluster(m)}
    assert {"test_cluster.py", "test_cluster_trust.py"} <= on_cluster, "the check must see them"
    for module in modules:
        unit = work_unit(f"test/e2e/{module.name}::test_x")
        if module.name in on_cluster or module.name == "test_image.py":
            assert unit == CLUSTER_UNIT, module.name
        else:
            assert unit == f"test/e2e/{module.name}", module.name


def test_an_e2e_modules_tests_stay_together_and_unit_tests_go_one_by_one():
    assert work_unit("test/e2e/test_installers.py::test_a[iso]") == work_unit("test/e2e/test_installers.py::test_b")
    assert work_unit("test/unit/test_disk.py::test_sizes") != work_unit("test/unit/test_disk.py::test_ids")


def test_the_cluster_goes_first_then_the_unit_tests_while_its_image_builds_then_the_long_units():
    order = sorted(["test/unit/test_disk.py::test_ids", "test/e2e/test_packer.py::test_p",
                    "test/e2e/test_rack.py::test_r", "test/e2e/test_installers.py::test_i",
                    "test/e2e/test_cluster_trust.py::test_t", "test/e2e/test_serve_pxe_lan.py::test_s"], key=unit_order)
    assert [o.split("::")[0].rsplit("/", 1)[1] for o in order] == [
        "test_cluster_trust.py", "test_disk.py", "test_installers.py", "test_packer.py", "test_serve_pxe_lan.py",
        "test_rack.py"]
