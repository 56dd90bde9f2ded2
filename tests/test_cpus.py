"""--workers auto and onnxruntime's default thread count follow the CPUs the process may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.cpus import available_cpus, cgroup_cpu_limit, intra_op_threads, resolve_workers


def test_cgroup_v2_quota_is_read_from_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5


def test_cgroup_v2_without_a_quota_says_max(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_is_read_from_cfs_files(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0


def test_cgroup_v1_minus_one_is_no_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize(("affinity", "quota", "expected"), [(64, 1.5, 2), (64, None, 64), (4, 16.0, 4), (8, 0.2, 1)])
def test_available_cpus_is_the_smaller_of_affinity_and_the_quota_rounded_up(
    affinity: int, quota: float | None, expected: int
) -> None:
    assert available_cpus(lambda: affinity, lambda: quota) == expected


def test_workers_auto_honours_a_cpu_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert resolve_workers("auto", lambda: available_cpus(lambda: 32, lambda: cgroup_cpu_limit(tmp_path))) == 3
    assert resolve_workers("2") == 2


def test_intra_op_threads_share_the_cpus_among_every_instance_of_every_worker() -> None:
    assert intra_op_threads(instances=2, workers=2, cpus=lambda: 8) == 2
    assert intra_op_threads(instances=3, workers=4, cpus=lambda: 8) == 1
