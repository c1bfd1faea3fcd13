"""Every benchmark of ``python -m hmtl_mpi.bench`` is listed, imports and answers --help."""

from __future__ import annotations

import pytest

from hmtl_mpi.bench import __main__ as bench


@pytest.mark.parametrize("what", bench.WHAT)
def test_every_benchmark_answers_help(what, capsys):
    with pytest.raises(SystemExit) as end:
        bench.main([what, "--help"])
    assert end.value.code == 0
    out = capsys.readouterr().out
    assert f"hmtl_mpi.bench {what}" in out.splitlines()[0] or what in out, out[:300]
    assert f"* {what}" in bench.__doc__          # described in the list


def test_an_unknown_benchmark_is_exit_2(capsys):
    assert bench.main(["nosuch"]) == 2
    assert "unknown benchmark 'nosuch'" in capsys.readouterr().err
