"""Fedra from Python: workers whose local training is your own loop, over Fedra's C++ runtime.

A Worker joins a coordinator exactly as `fedra worker` does (the same options, as keyword
arguments) and hands each training task to your code::

    worker = fedra.Worker(connect="127.0.0.1:7443", name="site-3", num_examples=len(my_data))
    for task in worker.tasks():              # ends when the job ends
        model.load_state_dict(task.model)    # the global model (the worker's tensors, no copy)
        loss = my_train(model, task.config)  # lr, epochs, local_steps, seed, proximal_mu, ...
        task.reply(model.state_dict(), num_examples=len(my_data), metrics={"train_loss": loss})

The network, the wire format, the checks, DP's clipping and noise, secure aggregation's masking
and the coordinator's aggregation stay in C++ (docs/python.md).
"""
import os
import subprocess
import sys
import warnings


def _fast_blas_kernels():
    """What `fedra` does at its start (core/system/process.cc use_fast_blas_kernels): OpenBLAS takes
    some virtual CPUs for a 2004 Prescott and picks its slowest kernels (~5x slower matmuls, and
    other last bits than the C++ workers'), so the real core is named before torch loads OpenBLAS.
    FEDRA_KEEP_BLAS=1 or an OPENBLAS_CORETYPE of your own leaves it alone."""
    if "OPENBLAS_CORETYPE" in os.environ or "FEDRA_KEEP_BLAS" in os.environ:
        return
    probe = ("import ctypes; f = ctypes.CDLL('libblas.so.3').openblas_get_corename; "
             "f.restype = ctypes.c_char_p; print(f().decode())")
    if "torch" in sys.modules:  # too late to choose: say so if it matters
        try:
            import ctypes
            f = ctypes.CDLL("libblas.so.3").openblas_get_corename
            f.restype = ctypes.c_char_p
            if f().decode().lower() == "prescott":
                warnings.warn("torch was imported before fedra, and OpenBLAS took this CPU for a Prescott: matrix "
                              "products run its slowest kernels. Import fedra first, or set OPENBLAS_CORETYPE=Haswell",
                              stacklevel=3)
        except (OSError, AttributeError):
            pass
        return
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return
    fix = "SkylakeX" if " avx512f" in flags else "Haswell" if " avx2" in flags else None
    if fix is None:
        return
    try:
        core = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return
    if core.strip().lower() == "prescott":
        os.environ["OPENBLAS_CORETYPE"] = fix


_fast_blas_kernels()

import torch  # noqa: E402,F401  (registers torch's types before the extension uses them)

from . import loops, models
from ._coordinator import Coordinator, FedAvg
from ._worker import Task, Worker, WorkerError
from .simulate import SimulationError, simulate

__all__ = ["Coordinator", "FedAvg", "Worker", "Task", "WorkerError", "simulate", "SimulationError", "loops", "models"]
