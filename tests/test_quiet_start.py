"""A quiet start: every entry point's main() drops bitsandbytes' missing-CPU-kernel notice, and only it.

The record is emitted here through bitsandbytes' own logger, so the test does not depend on the
CPU having AVX512-BF16 (where bitsandbytes emits it when imported)."""

from __future__ import annotations

import importlib
import logging
import sys

import pytest

from medart_core.quiet import BITSANDBYTES_CPU_LOGGER

ENTRY_POINTS = [
    "app", "medart_core.__main__", "finetune.train", "finetune.train_demo_model", "finetune.make_demo_dataset",
    "finetune.experiments.guidance_sweep", "finetune.experiments.hldf_ablation",
    "bench.bench_train", "bench.bench_generate", "bench.bench_metrics", "bench.bench_caption", "bench.bench_real_size",
]
NOTICE = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
          "`pip install kernels` and the kernels >= 0.11.1")


@pytest.fixture
def bitsandbytes_logger(monkeypatch):
    """The logger with the filters it had before the test (main() adds one for the process)."""
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    monkeypatch.setattr(logger, "filters", list(logger.filters))
    return logger


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_main_drops_only_the_missing_kernel_notice(module_name, bitsandbytes_logger, caplog, monkeypatch, capsys):
    module = importlib.import_module(module_name)
    monkeypatch.setattr(sys, "argv", [module_name, "--help"])
    with pytest.raises(SystemExit):
        module.main()
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bitsandbytes_logger.warning(NOTICE, "No module named 'kernels'")
        bitsandbytes_logger.warning("Failed to load CPU gemm_4bit_forward for another reason: kept")
        logging.getLogger("bitsandbytes.optim").warning("an unrelated warning: kept")
    messages = [record.getMessage() for record in caplog.records]
    assert not any("kernels-community" in m for m in messages)
    assert any("another reason" in m for m in messages) and any("unrelated" in m for m in messages)


def test_importing_an_entry_point_adds_no_filter(bitsandbytes_logger):
    before = list(bitsandbytes_logger.filters)
    for name in ENTRY_POINTS:
        importlib.import_module(name)
    assert bitsandbytes_logger.filters == before
