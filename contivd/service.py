"""
The agent's service tree: what C{twistd contivd} runs.

L{make_service} resolves the global reactor and hands it to
L{build_agent}, which wires every component under one L{Supervisor}.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from contivd.options import AgentConfig, AgentOptions
from contivd.supervisor import Supervisor

log = Logger()


def fatal_stopper(reactor: IReactorCore,
                  exit_code: int = 1) -> Callable[[Failure], None]:
    """
    What the supervisor calls on a L{contivd.errors.FatalError}: say why
    in one line on stderr and in the log, stop the agent, and make the
    process exit with C{exit_code}.
    """
    def stop(failure: Failure) -> None:
        message = str(failure.value)
        log.critical("stopping the agent: {reason}", reason=message)
        # twistd sends sys.stderr to the log; the person who started the
        # agent should see why it stopped too.
        err = sys.__stderr__ or sys.stderr
        err.write(f"contivd: {message}\n")
        err.flush()
        # Threads blocked in etcd long polls would hold up a normal exit;
        # once every service has stopped, leave at once.
        reactor.addSystemEventTrigger("after", "shutdown", _exit_with,
                                      exit_code)
        if reactor.running:
            reactor.stop()
        else:
            atexit.register(_exit_with, exit_code)

    return stop


def _exit_with(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def build_agent(config: AgentConfig, reactor: Any) -> Supervisor:
    """
    The agent: a L{Supervisor} whose components follow the start order of
    the design, each waiting for the ones it needs.
    """
    from contivd.agent import Agent

    agent = Agent(config, reactor, fatal_stopper(reactor))
    agent.build()
    return agent.supervisor


def make_service(options: AgentOptions) -> Supervisor:
    """The twistd entry point."""
    from twisted.internet import reactor

    assert options.config is not None
    return build_agent(options.config, reactor)
