"""One model version on onnxruntime: sessions, graph metadata, warm-up, and run off the event loop.

Each instance of the model's instance group gets its own InferenceSession and its own
thread. Sessions are thread-safe, but concurrent runs of one session share its intra-op
thread pool and contend for it; separate sessions with cores divided between them keep
in-flight batches independent (the same choice Triton's onnxruntime backend makes), at
the cost of one copy of the weights per instance.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.cpus import intra_op_threads
from serve.datatypes import ORT_TO_OIP
from serve.errors import ModelExecutionError, ModelLoadError
from serve.runtime.options import RuntimeOptions
from serve.runtime.providers import CUDA, choose_providers
from serve.runtime.strings import from_ort_strings, to_ort_strings
from serve.types import GraphTensor

log = logging.getLogger(__name__)

# Batches expected to take less than this run on the event loop instead of an executor thread.
INLINE_BELOW_NS = 150_000

_OPTIMIZATION_LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _graph_tensors(args: Sequence[ort.NodeArg], what: str, unknown_rank: frozenset[str]) -> list[GraphTensor]:
    tensors = []
    for arg in args:
        datatype = ORT_TO_OIP.get(arg.type)
        if datatype is None:
            raise ModelLoadError(
                f"{what} '{arg.name}' has type {arg.type}; only tensors are supported (no sequences or maps)"
            )
        if datatype == "BF16":
            raise ModelLoadError(f"{what} '{arg.name}' is bfloat16, which this server does not support yet")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        tensors.append(GraphTensor(arg.name, datatype, shape, rank_known=arg.name not in unknown_rank))
    return tensors


class OnnxRunner:
    """Sessions for one model version, and an executor thread per instance."""

    def __init__(
        self,
        model_path: Path,
        options: RuntimeOptions,
        *,
        graph: bytes | None = None,
        external_data_dir: Path | None = None,
        unknown_rank: frozenset[str] = frozenset(),
    ) -> None:
        """``graph``: the model to load, when prepared in memory (else the bytes of ``model_path``);
        ``external_data_dir``: where its external data lives (checked by the caller); ``unknown_rank``:
        the inputs and outputs the graph gives no shape (model_file.py)."""
        self.model_path = model_path
        self.options = options
        self._external_data_dir = external_data_dir
        self._sessions: list[ort.InferenceSession] = []
        self._use_iobinding: list[bool] = []
        self.providers: list[str] = []
        model_bytes = graph if graph is not None else model_path.read_bytes()
        try:
            self._open_sessions(model_bytes)
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises many types; all mean "this model cannot load"
            raise ModelLoadError(f"onnxruntime could not load {model_path.name}: {exc}") from exc
        first = self._sessions[0]
        self.inputs = _graph_tensors(first.get_inputs(), "input", unknown_rank)
        self.outputs = _graph_tensors(first.get_outputs(), "output", unknown_rank)
        self.output_names = [t.name for t in self.outputs]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(self._sessions)):
            self._free.put(i)
        self._squeeze: frozenset[str] = frozenset()
        self._unsqueeze: frozenset[str] = frozenset()
        # Neither strings nor reshaped scalars: feeds and results pass through untouched.
        self._plain_inputs = all(t.datatype != "BYTES" for t in self.inputs)
        self._plain_outputs = all(t.datatype != "BYTES" for t in self.outputs)
        self._executor = ThreadPoolExecutor(max_workers=len(self._sessions), thread_name_prefix="ort")
        # Starts high so that the first batches run on the executor and measure the model.
        self._recent_ns = INLINE_BELOW_NS * 2

    def _open_sessions(self, model_bytes: bytes) -> None:
        """One session per instance (per instance and GPU with kind GPU), each with its providers."""
        options = self.options
        available = ort.get_available_providers()
        count = max(1, options.instance_count)
        devices = list(options.gpu_ids) or [0]
        for index in range(count * (len(devices) if options.device_kind == "gpu" else 1)):
            choice = choose_providers(
                device_kind=options.device_kind,
                device_id=devices[index % len(devices)],
                accelerators=options.accelerators,
                available=available,
            )
            session = ort.InferenceSession(
                model_bytes,
                sess_options=self._session_options(count),
                providers=choice.providers,
                provider_options=choice.options,
            )
            self._sessions.append(session)
            used = session.get_providers()
            # With CUDA, bind inputs once so a batch crosses to the device in one copy per tensor.
            self._use_iobinding.append(used[0] == CUDA)
            if not self.providers:
                self.providers = used

    def reshape_scalars(self, inputs: frozenset[str], outputs: frozenset[str]) -> None:
        """Tensors the graph has without a last dimension that are served with one of size 1
        (Triton's dims [1] for a scalar): these inputs lose it before running, these outputs gain it."""
        self._squeeze, self._unsqueeze = inputs, outputs
        self._plain_inputs = self._plain_inputs and not inputs
        self._plain_outputs = self._plain_outputs and not outputs

    @property
    def instance_count(self) -> int:
        return len(self._sessions)

    def _session_options(self, instances: int) -> ort.SessionOptions:
        o = self.options
        so = ort.SessionOptions()
        intra = o.intra_op_threads or intra_op_threads(instances, o.workers)
        self.intra_op_threads = intra
        so.intra_op_num_threads = intra
        if o.inter_op_threads:
            so.inter_op_num_threads = o.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if o.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            so.graph_optimization_level = _OPTIMIZATION_LEVELS[o.optimization_level]
        except KeyError:
            raise ModelLoadError(
                f"unknown graph optimization level '{o.optimization_level}'; "
                f"expected one of {sorted(_OPTIMIZATION_LEVELS)}"
            ) from None
        so.enable_cpu_mem_arena = o.enable_mem_arena
        so.enable_mem_pattern = o.enable_mem_pattern
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if o.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if o.allow_spinning else "0")
        if self._external_data_dir is not None:
            # A model given as bytes has no directory of its own for relative external-data paths.
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self._external_data_dir)
            )
        for key, value in o.extra_session_config.items():
            so.add_session_config_entry(key, value)
        so.log_severity_level = 3
        return so

    def run_sync(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch on a free instance; called from an executor thread (onnxruntime releases the GIL)."""
        index = self._free.get()
        try:
            return self._run_on(index, feeds)
        finally:
            self._free.put(index)

    def _run_on(self, index: int, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[index]
        if self._plain_inputs:
            ort_feeds = feeds
        else:
            ort_feeds = {
                name: to_ort_strings(name, array[..., 0] if name in self._squeeze else array)
                for name, array in feeds.items()
            }
        started = time.perf_counter_ns()
        try:
            if self._use_iobinding[index]:
                binding = session.io_binding()
                for name, array in ort_feeds.items():
                    binding.bind_cpu_input(name, np.ascontiguousarray(array))
                for name in self.output_names:
                    binding.bind_output(name)
                session.run_with_iobinding(binding)
                results = binding.copy_outputs_to_cpu()
            else:
                results = session.run(self.output_names, ort_feeds)
        except Exception as exc:
            raise ModelExecutionError(f"onnxruntime failed: {exc}") from exc
        elapsed = time.perf_counter_ns() - started
        # Moving average over about eight batches: a slow model leaves the loop after one or two
        # batches, while a lone hiccup (GC, preemption) does not send a fast one to the executor.
        self._recent_ns = (self._recent_ns * 7 + elapsed) // 8
        if self._plain_outputs:
            return dict(zip(self.output_names, results, strict=True))
        outputs = {name: from_ort_strings(r) for name, r in zip(self.output_names, results, strict=True)}
        for name in self._unsqueeze:
            outputs[name] = outputs[name][..., np.newaxis]
        return outputs

    def run_now(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Run a batch expected to take less than a thread hand-off right here, on the event loop:
        for small models the hop to an executor thread and back (and the GIL ping-pong) costs
        several times the model's own compute. None when it is not (a slower model, or every
        instance busy); ``run`` then hands it to an executor thread."""
        if self._recent_ns >= INLINE_BELOW_NS:
            return None
        try:
            index = self._free.get_nowait()
        except queue.Empty:
            return None
        try:
            return self._run_on(index, feeds)
        finally:
            self._free.put(index)

    async def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.run_now(feeds)
        if outputs is not None:
            return outputs
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, feeds)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sessions.clear()
