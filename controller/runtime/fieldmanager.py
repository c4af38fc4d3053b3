"""The names under which DS01's components write to the apiserver (field managers).

The apiserver records, per field of an object, which manager set it
(`metadata.managedFields`), and a server-side apply of a field another manager
owns with a different value is refused as a conflict. A write that names no
`fieldManager` is recorded under the client's user agent up to its first "/":
the Kubernetes Python client's is `OpenAPI-Generator/<version>/python`, so the
operator's and the agent's writes looked alike, and `ds01 dev up` failed on its
own history with a conflict naming "OpenAPI-Generator". Naming the client's
user agent names every write it makes (creates, merge patches, status), with
no call site able to forget it, and shows in the apiserver's logs too.
"""

from __future__ import annotations

from kubernetes import client

from controller import __version__

OPERATOR = "ds01-operator"
AGENT = "ds01-agent"
DEV = "ds01-dev"
"""`ds01 dev up` and its simulated node (kubectl's --field-manager)."""


def name_writes(api: client.ApiClient, manager: str) -> client.ApiClient:
    """Make ``manager`` the field manager of every write through ``api``; returns ``api``."""
    api.user_agent = f"{manager}/{__version__}"
    return api
