"""The run state of a dock widget (idle, running, cancelling, done, failed), with checked
transitions: the Run button is a Cancel button while running, and no second job starts."""

from __future__ import annotations

import enum
from collections.abc import Callable


class RunState(str, enum.Enum):
    """The run state of a dock widget."""

    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"


_TRANSITIONS = {
    RunState.IDLE: {RunState.RUNNING, RunState.FAILED},
    RunState.RUNNING: {RunState.CANCELLING, RunState.DONE, RunState.FAILED},
    RunState.CANCELLING: {RunState.IDLE, RunState.DONE, RunState.FAILED},
    RunState.DONE: {RunState.RUNNING, RunState.FAILED, RunState.IDLE},
    RunState.FAILED: {RunState.RUNNING, RunState.FAILED, RunState.IDLE},
}


class RunStateMachine:
    """Explicit run state with checked transitions and change callbacks.

    >>> s = RunStateMachine()
    >>> s.state, s.busy
    (<RunState.IDLE: 'idle'>, False)
    >>> s.set(RunState.RUNNING); s.busy
    True
    """

    def __init__(self) -> None:
        self._state = RunState.IDLE
        self._callbacks: list[Callable[[RunState], None]] = []

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def busy(self) -> bool:
        """A job is running or being cancelled: no second job may start."""
        return self._state in (RunState.RUNNING, RunState.CANCELLING)

    def connect(self, callback: Callable[[RunState], None]) -> None:
        self._callbacks.append(callback)

    def set(self, state: RunState) -> None:
        state = RunState(state)
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"run state cannot go from {self._state.value} to {state.value}")
        self._state = state
        for callback in self._callbacks:
            callback(state)
