"""A quiet start: drop the one bitsandbytes notice that every Med-Art command would print.

Importing bitsandbytes (diffusers' pipelines and peft import it) on a CPU with AVX512-BF16 logs
"Failed to load CPU gemm_4bit_forward from kernels-community ..." through the logger
`bitsandbytes.backends.cpu.ops`: an optional faster 4-bit CPU kernel is missing, and nothing
else is wrong (bitsandbytes uses its own kernel). Users read it as breakage. Each entry point's
`main()` calls `quiet_start()` before anything imports bitsandbytes; only that record is
dropped, every other warning of that logger and of any other still shows. Nothing happens on
import of this module.
"""

from __future__ import annotations

import logging

BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
MISSING_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropMissingKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(MISSING_KERNEL_NOTICE)


def quiet_start() -> None:
    """Filter the missing-kernel notice on its own logger; calling it again adds nothing."""
    target = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, _DropMissingKernelNotice) for f in target.filters):
        target.addFilter(_DropMissingKernelNotice())
