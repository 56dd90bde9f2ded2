"""Reading py-spy's raw output (``--format raw --threads``): where each thread's samples went.

A raw line is ``thread (tid): name;frame;frame;... count``, outermost frame first. Samples whose
innermost Python frame is the one that started the event loop are time spent in native code under
the loop: grpcio's Cython and C core, uvloop, asyncio's C tasks and futures, freeing messages.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# Frames that only start the process and its loop; a sample ending in one ran native code below it.
_ENTRY = re.compile(
    r"^(_run_module_as_main|_run_code|_run_in_loop"
    r"|<module> \((serve/__main__|bench/_grpc_echo)\.py\)|main \((serve/cli|bench/_grpc_echo)\.py\))"
)
NATIVE = "(native code under the event loop)"


def _function(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)  # per function, not per line


def summarize(path: Path, top: int = 25) -> str:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()  # main thread, innermost frame
    within: Counter[str] = Counter()  # main thread, anywhere in the stack
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        name = thread.split(":", 1)[-1].strip()
        threads[name] += n
        if name != "MainThread":
            continue
        ours = [f for f in map(_function, frames) if not _ENTRY.match(f)]
        own[ours[-1] if ours else NATIVE] += n
        for function in set(ours):
            within[function] += n
    total = sum(threads.values())
    main = threads["MainThread"] or 1
    lines = [f"samples by thread ({total} in all):"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in threads.most_common()]
    lines.append(f"main thread, innermost frame ({main} samples):")
    lines += [f"  {100 * c / main:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("main thread, anywhere in the stack:")
    lines += [f"  {100 * c / main:5.1f}%  {f}" for f, c in within.most_common(top)]
    return "\n".join(lines)
