"""Custom procedures: admin-supplied Python callables named ``module:function`` in rules.

A procedure gets the message facts (a mapping; ``facts.headers`` lists every header) and
returns something truthy to continue or falsy to stop (Oracle's Y/N). It runs with a time
limit; a procedure that raises, cannot be imported or runs out of time is logged and
treated as "continue", so a broken procedure never loses or blocks a message. A procedure
that overruns keeps running in its thread (Python cannot kill it); its answer is ignored.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


class ProcedureRunner:
    """Callable as ``runner("pkg.mod:func", facts) -> bool`` (True: continue)."""

    def __init__(self, timeout_ms: int = 500):
        self.timeout = timeout_ms / 1000
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="procedure")
        self._cache: dict[str, Callable[[Mapping[str, Any]], Any]] = {}
        self.failures = 0

    def __call__(self, ref: str, facts: Mapping[str, Any]) -> bool:
        """Run a rule's procedure: True to continue (also when it fails), False to stop."""
        failed, result = self._run(ref, facts)
        return True if failed else bool(result)

    def value(self, ref: str, facts: Mapping[str, Any]) -> str | None:
        """Run a custom-tag procedure: its result as text, None when it fails or gives None."""
        failed, result = self._run(ref, facts)
        return None if failed or result is None else str(result)

    def _run(self, ref: str, facts: Mapping[str, Any]) -> tuple[bool, Any]:
        try:
            func = self._resolve(ref)
            return False, self._pool.submit(func, facts).result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            log.error("procedure %s ran over %.0f ms; continuing", ref, self.timeout * 1000)
        except Exception:  # noqa: BLE001 — an admin's bug must not touch the message
            log.exception("procedure %s failed; continuing", ref)
        self.failures += 1
        return True, None

    def _resolve(self, ref: str) -> Callable[[Mapping[str, Any]], Any]:
        if ref not in self._cache:
            module, _, name = ref.partition(":")
            self._cache[ref] = getattr(importlib.import_module(module), name)
        return self._cache[ref]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
