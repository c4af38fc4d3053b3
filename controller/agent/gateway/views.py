"""What the gateway reads from the agent it runs in: accounts, limits, the node's spec, its GPUs.

The gateway shares the agent's views instead of keeping its own: one apiserver
watch, one NVML inventory, one saved copy for outages. With the apiserver
away they are the last ones read (or saved before a restart); with no policy
yet the spec is empty, so nothing is reserved or revoked, and limits are the
built-in defaults for everyone without a GPURateLimit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from controller.agent.agent import Agent
from controller.agent.gateway.identity import Accounts
from controller.agent.inventory import Inventory
from controller.api.node import GPUNodeSpec
from controller.policy.effective import NamedLimit


class PolicySource(Protocol):
    def accounts(self) -> Accounts: ...

    def limits(self) -> Sequence[NamedLimit]: ...

    def spec(self) -> GPUNodeSpec: ...

    def inventory(self) -> Inventory | None: ...


class AgentSource:
    """The running agent's views (read from the gateway's thread; each is replaced whole)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def accounts(self) -> Accounts:
        by_login, groups, _ = self.agent.accounts_view()
        return Accounts(by_login, groups)

    def limits(self) -> Sequence[NamedLimit]:
        return self.agent.accounts_view()[2]

    def spec(self) -> GPUNodeSpec:
        policy = self.agent.policy
        return policy.spec if policy is not None else GPUNodeSpec()

    def inventory(self) -> Inventory | None:
        return self.agent.inventory
