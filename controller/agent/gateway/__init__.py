"""The Docker gateway: the socket users talk to instead of the engine's (issue 7).

On a Docker host, whoever can talk to the engine is root. The agent serves a
Docker API socket for users; only the agent and admins reach the engine's own.
For every connection the kernel names the caller (SO_PEERCRED); their account
and policy come from the agent's views. Creates are vetted (`controller.policy.
gateway`), given GPUs (`controller.policy.gpuchoice`) and signed
(`controller.agent.trust`); everything on a container is for its owner only;
the rest is relayed faithfully, streams and hijacked connections included.

Modules: `http` (framing, relaying, splicing), `identity` (who), `engine` (the
gateway's own engine queries, ownership from signed labels), `allocator` (the
lock around counts and GPUs), `create` and `routes` (what each request gets),
`proxy` (one connection), `service` (socket and thread), `views` (the agent's
state the gateway reads).
"""

from controller.agent.gateway.core import GatewayOptions
from controller.agent.gateway.service import Gateway
from controller.agent.gateway.views import AgentSource, PolicySource

__all__ = ["AgentSource", "Gateway", "GatewayOptions", "PolicySource"]
