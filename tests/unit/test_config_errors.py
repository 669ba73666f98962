"""A malformed config, profile or trace gives a one-line error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecrl.cli import main
from ecrl.config import from_file
from ecrl.errors import ConfigError
from ecrl.twin.profile import builtin_profile_path, load_profile
from ecrl.twin.spec import ClusterSpec


def _write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_out_of_range_field_is_named_with_its_range(tmp_path):
    p = _write(tmp_path, "deployment:\n  max_replicas: 0\n")
    with pytest.raises(ConfigError) as exc:
        from_file(ClusterSpec, p)
    msg = str(exc.value)
    assert "deployment.max_replicas" in msg and "[1, 64]" in msg and "\n" not in msg


def test_unknown_key_is_rejected_and_allowed_keys_listed(tmp_path):
    p = _write(tmp_path, "slo_p95: 0.2\n")
    with pytest.raises(ConfigError, match="'slo_p95'.*unknown key.*slo_p95_s"):
        from_file(ClusterSpec, p)


def test_wrong_type_is_named(tmp_path):
    p = _write(tmp_path, "nodes:\n  - name: a\n    cpu_cores: many\n")
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.cpu_cores.*expected a number"):
        from_file(ClusterSpec, p)


def test_cross_field_rule_names_the_field(tmp_path):
    p = _write(
        tmp_path, "deployment:\n  min_replicas: 3\n  max_replicas: 2\n  initial_replicas: 2\n"
    )
    with pytest.raises(ConfigError, match="deployment.min_replicas"):
        from_file(ClusterSpec, p)


def test_invalid_yaml_reports_the_line(tmp_path):
    p = _write(tmp_path, "deployment: [\n")
    with pytest.raises(ConfigError, match="line"):
        from_file(ClusterSpec, p)


def test_profile_with_decreasing_exec_times_is_refused(tmp_path):
    text = Path(builtin_profile_path("rtx3080-mobilenetv4")).read_text()
    bad = text.replace("exec_s: [0.0060, 0.0065", "exec_s: [0.0070, 0.0065")
    p = tmp_path / "p.yaml"
    p.write_text(bad)
    with pytest.raises(ConfigError, match="compute.exec_s.*must not decrease"):
        load_profile(str(p))


def test_cli_prints_one_line_error_and_exits_2(tmp_path, capsys):
    p = _write(tmp_path, "slo_p95_s: -1\n")
    assert main(["experiment", "--cluster", str(p), "--repeats", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "slo_p95_s" in err
