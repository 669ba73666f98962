"""The A/B tool's variant syntax: names, keys, CPU lists, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecrl.bench_ab import BadArguments, Variant, main
from ecrl.bench_services import REPO


def test_a_bare_name_is_this_checkout_unpinned() -> None:
    assert Variant.parse("new") == Variant("new", REPO, None, None, None)


def test_every_key_is_read() -> None:
    v = Variant.parse("base;root=/tmp/base;policy=/tmp/p.onnx;server-cpus=1;client-cpus=0,2")
    assert v == Variant("base", Path("/tmp/base"), "/tmp/p.onnx", (1,), (0, 2))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "starts with a name"),
        ("root=/x", "starts with a name"),
        ("a;cpus=1", "'cpus=1' is not one of root, policy, server-cpus, client-cpus"),
        ("a;root=", "is not one of"),
        ("a;server-cpus=one", "CPUs 'one'"),
        ("a;client-cpus=-1", "CPUs '-1'"),
    ],
)
def test_a_bad_variant_names_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BadArguments, match=says):
        Variant.parse(text)


def test_the_command_refuses_bad_input_in_one_line_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["a", "a"], ["a;x=1"], ["a", "--rounds", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("python -m ecrl.bench_ab: error:") and "\n" not in err
