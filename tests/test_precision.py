"""bf16 on a CPU without native bf16 is warned about in one line; CPUs that have it are left alone."""

import logging

from simwnw_hf.train.precision import check_mixed_precision, cpu_has_native_bf16

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_flags_decide(tmp_path):
    for name, text, expected in (("avx2", AVX2_ONLY, False), ("spr", SAPPHIRE, True), ("arm", ARM, True)):
        (tmp_path / name).write_text(text)
        assert cpu_has_native_bf16(tmp_path / name) is expected, name
    assert cpu_has_native_bf16(tmp_path / "missing") is None


def test_bf16_on_avx2_cpu_warns_once_in_one_line(tmp_path, caplog):
    (tmp_path / "cpuinfo").write_text(AVX2_ONLY)
    with caplog.at_level(logging.WARNING):
        message = check_mixed_precision("bf16", "cpu", tmp_path / "cpuinfo")
    assert message and "\n" not in message and "--mixed-precision no" in message
    assert [r.getMessage() for r in caplog.records] == [message]
    assert check_mixed_precision("no", "cpu", tmp_path / "cpuinfo") is None
    assert check_mixed_precision(None, "cpu", tmp_path / "cpuinfo") is None
    (tmp_path / "spr").write_text(SAPPHIRE)
    assert check_mixed_precision("bf16", "cpu", tmp_path / "spr") is None
    assert check_mixed_precision("bf16", "cpu", tmp_path / "unreadable") is None  # cannot tell: no false alarm
