"""
The agent's shared context: the configuration, the reactor, and the
components under one supervisor, each able to find the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from contivd.options import AgentConfig
from contivd.supervisor import Component, Supervisor


class Agent:
    """
    Builds and holds the components of one agent.

    @ivar supervisor: the MultiService that twistd runs.
    """

    def __init__(self, config: AgentConfig, reactor: Any,
                 on_fatal: Callable[[Failure], None]) -> None:
        self.config = config
        self.reactor = reactor
        self.supervisor = Supervisor(reactor, on_fatal)

    def component(self, name: str) -> Component | None:
        """The component called C{name}, if the agent has one."""
        return self.supervisor.components.get(name)

    def build(self) -> None:
        """Add the components, in the design's start order."""
        from contivd.status import StatusServer

        self.supervisor.add(StatusServer(self))
