"""bench/machine.py's cpu_name: the CPU named in every benchmark table, with its generation where
the model name alone does not tell it (the VMs report a bare "AMD EPYC" for Zen 3, 4 and 5).
/proc/cpuinfo blocks written here after the machines' own; the expected names written by hand."""
from __future__ import annotations

from bench_scripts import load_bench_script


def block(vendor: str, family: int, model: int, name: str, flags: str) -> str:
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: {name}\nflags\t\t: fpu sse2 {flags}\n\n"
            f"processor\t: 1\nvendor_id\t: {vendor}\ncpu family\t: 99\nmodel\t\t: 99\nmodel name\t: other\n")


def test_amd_generations_from_family_and_flags():
    m = load_bench_script("machine.py")
    assert m.cpu_name(block("AuthenticAMD", 26, 2, "AMD EPYC", "avx2 avx512f avx512_vnni avx_vnni")) == \
        "AMD EPYC (Zen 5, family 26 model 2; AVX-512 VNNI, AVX-VNNI)"
    assert m.cpu_name(block("AuthenticAMD", 25, 17, "AMD EPYC", "avx2 avx512f avx512_vnni")) == \
        "AMD EPYC (Zen 4, family 25 model 17; AVX-512 VNNI)"
    assert m.cpu_name(block("AuthenticAMD", 25, 1, "AMD EPYC", "avx2")) == "AMD EPYC (Zen 3, family 25 model 1)"


def test_intel_server_model_table():
    m = load_bench_script("machine.py")
    text = block("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Processor", "avx512f avx512_vnni amx_int8 amx_tile")
    assert m.cpu_name(text) == "Intel(R) Xeon(R) Processor (Sapphire Rapids, family 6 model 143; AMX-INT8, AVX-512 VNNI)"
    # a model number not in the table: the numbers alone
    assert m.cpu_name(block("GenuineIntel", 6, 1, "Intel(R) Xeon(R) CPU", "avx2")) == "Intel(R) Xeon(R) CPU (family 6 model 1)"


def test_no_family_fields():
    m = load_bench_script("machine.py")  # an arm64 /proc/cpuinfo has no model name: platform's answer
    assert m.cpu_name("processor\t: 0\nmodel name\t: Some CPU\n") == "Some CPU"
    assert m.cpu_name("processor\t: 0\nBogoMIPS\t: 50.00\n")  # non-empty, from platform
