"""One line that says which CPU a benchmark table was measured on.

The ratios in our tables depend on the CPU as much as on the code: a matrix-product-bound model
(ours) gains more from wider vector units than an overhead-bound one (the references), so
every table names the CPU model, its family and whether it has AVX-512.

Example
-------
>>> from machine import cpu_description  # doctest: +SKIP
>>> cpu_description()  # doctest: +SKIP
'AMD EPYC (x86_64, family 26 model 2, AVX-512), 2 CPUs'
"""

import os
import platform


def _cpuinfo_fields(path="/proc/cpuinfo"):
    """The first processor's ``key: value`` fields from ``/proc/cpuinfo`` (empty elsewhere)."""
    fields = {}
    try:
        with open(path) as file:
            for line in file:
                if not line.strip():
                    break  # the first processor's block ends here
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_description():
    """``"<model> (<arch>, family F model M, AVX-512 | AVX2), N CPUs"`` on Linux (N: the logical
    CPUs this process may run on); the platform's own names elsewhere."""
    fields = _cpuinfo_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    details = [platform.machine()]
    if "cpu family" in fields:
        details.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    flags = fields.get("flags", "").split()
    if "avx512f" in flags:
        details.append("AVX-512")
    elif "avx2" in flags:
        details.append("AVX2")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({', '.join(details)}), {cpus} CPUs"


if __name__ == "__main__":
    print(cpu_description())
