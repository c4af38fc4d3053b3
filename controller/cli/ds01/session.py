"""The I/O edge of `kubectl ds01`: one identity's view of the cluster through its kubeconfig.

Everything read here is what the caller's RBAC lets them read: a student sees
their account namespace (its grants, Events, the published `ds01-policy`
and usage history), the GPURateLimits and GPUNodes; approvers also see every
account's namespace, grants and published policy; admins everything.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from controller.api.account import LABEL_USER, Account, AccountError, label_value, parse_account
from controller.api.accountpolicy import POLICY_CONFIGMAP, AccountPolicy
from controller.api.base import GROUP, VERSION
from controller.api.kinds import GPUGrant, GPUNode, GPURateLimit
from controller.cli.ds01.common import REFUSED, UNREACHABLE, CliError
from controller.policy import publication
from controller.policy.explain import EventView

ACCOUNT_PREFIX = "u-"
"""Account namespaces are `u-<login>` by convention (`kubectl ds01 onboard`)."""


def describe_failure(error: BaseException) -> tuple[str, int] | None:
    """A one-line message and exit code for a failure talking to the cluster; None: a bug."""
    if isinstance(error, ApiException):
        message = _status_message(error)
        if error.status in (None, 0):
            return f"cannot reach the cluster: {error.reason}", UNREACHABLE
        if error.status == 401:
            return f"not authenticated by the cluster: {message}", UNREACHABLE
        if error.status == 403:
            return f"not allowed: {message}", REFUSED
        if error.status == 404:
            return f"not found: {message}", REFUSED
        return f"refused ({error.status}): {message}", REFUSED
    if isinstance(error, ConfigException):
        return f"cannot load a kubeconfig: {error}", UNREACHABLE
    if isinstance(error, (HTTPError, ssl.SSLError, ConnectionError)):
        return f"cannot reach the cluster: {error}", UNREACHABLE
    return None


def _status_message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        return str(error.reason)
    return str(body.get("message") or error.reason)


def dns_label(text: str) -> str:
    """``text`` as a namespace-name part: lower case, other characters as `-`."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:61] or "user"


def conventional_namespace(user: str) -> str:
    """`u-<local part of the user name>`: ``248835@lab.example`` -> ``u-248835``."""
    return ACCOUNT_PREFIX + dns_label(user.split("@", 1)[0])


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]


class Session:
    """API clients for one kubeconfig/context, and the reads commands share."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            api = client.ApiClient()
            self.context_namespace: str | None = None
        else:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
            self.context_namespace = _context_namespace(kubeconfig, context)
        self.api = api
        # Any: the generated client's hints want model objects where it takes dicts.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.rbac: Any = client.RbacAuthorizationV1Api(api)
        self.auth: Any = client.AuthenticationV1Api(api)
        self._identity: Identity | None = None

    # -- who and where ----------------------------------------------------------------

    def whoami(self) -> Identity:
        if self._identity is None:
            review = self.auth.create_self_subject_review(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            )
            info = review.status.user_info
            self._identity = Identity(info.username or "", tuple(info.groups or ()))
        return self._identity

    def account_by_user(self, user: str) -> Account:
        """The account of ``user`` (approvers and admins: by the namespace label)."""
        found = self.core.list_namespace(label_selector=f"{LABEL_USER}={label_value(user)}")
        for ns in found.items:
            account = _account(ns)
            if account is not None and account.user == user:
                return account
        raise CliError(f"no account for user {user!r}: no namespace labelled {LABEL_USER}")

    def accounts(self) -> list[Account]:
        """Every account (approvers and admins)."""
        found = self.core.list_namespace(label_selector=LABEL_USER)
        out = [a for a in (_account(ns) for ns in found.items) if a is not None]
        return sorted(out, key=lambda a: a.user)

    def my_namespace(self, flag: str | None) -> str:
        """The caller's account namespace: ``-n``, the context's namespace, else `u-<login>`."""
        if flag:
            return flag
        if self.context_namespace and self.context_namespace != "default":
            return self.context_namespace
        return conventional_namespace(self.whoami().user)

    # -- reads --------------------------------------------------------------------------

    def published(self, namespace: str) -> AccountPolicy:
        """The account's published policy; CliError when it is missing or unreadable."""
        try:
            found = self.core.read_namespaced_config_map(POLICY_CONFIGMAP, namespace)
        except ApiException as error:
            if error.status in (403, 404):
                raise CliError(
                    f"no account policy readable in namespace {namespace} ({error.status}): "
                    "is it your account namespace? Pass -n with it; an admin creates accounts "
                    "with `kubectl ds01 onboard`, and the operator publishes ConfigMap "
                    f"{POLICY_CONFIGMAP} there within seconds"
                ) from None
            raise
        doc = publication.parse(found.data or {})
        if doc is None:
            raise CliError(
                f"ConfigMap {namespace}/{POLICY_CONFIGMAP} is not in a format this ds01 reads; "
                "upgrade the CLI"
            )
        return doc

    def all_published(self) -> list[AccountPolicy]:
        """Every account's published policy (approvers: allowed by name)."""
        found = self.core.list_config_map_for_all_namespaces(
            field_selector=f"metadata.name={POLICY_CONFIGMAP}"
        )
        docs = [publication.parse(item.data or {}) for item in found.items]
        return sorted((d for d in docs if d is not None), key=lambda d: d.user)

    def grants(self, namespace: str | None) -> list[GPUGrant]:
        if namespace is None:
            found = self.custom.list_cluster_custom_object(GROUP, VERSION, "gpugrants")
        else:
            found = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "gpugrants"
            )
        return [GPUGrant.model_validate(item) for item in found.get("items", [])]

    def grant(self, namespace: str, name: str) -> GPUGrant:
        body = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpugrants", name
        )
        return GPUGrant.model_validate(body)

    def find_grant(self, name: str, namespace: str | None) -> GPUGrant:
        """``name`` (or ``namespace/name``) in the given namespace, else across all of them."""
        if "/" in name:
            namespace, name = name.split("/", 1)
        if namespace:
            return self.grant(namespace, name)
        matches = [g for g in self.grants(None) if g.metadata.name == name]
        if not matches:
            raise CliError(f"no GPUGrant named {name!r} in any namespace you can read")
        if len(matches) > 1:
            where = ", ".join(f"{g.metadata.namespace}/{name}" for g in matches)
            raise CliError(f"GPUGrant {name!r} is ambiguous: {where}; pass -n or NAMESPACE/NAME")
        return matches[0]

    def nodes(self) -> list[GPUNode]:
        found = self.custom.list_cluster_custom_object(GROUP, VERSION, "gpunodes")
        return [GPUNode.model_validate(item) for item in found.get("items", [])]

    def limits(self) -> list[GPURateLimit]:
        found = self.custom.list_cluster_custom_object(GROUP, VERSION, "gpuratelimits")
        return [GPURateLimit.model_validate(item) for item in found.get("items", [])]

    def events(self, namespace: str, name: str, kind: str | None = None) -> list[EventView]:
        selector = f"involvedObject.name={name}"
        if kind:
            selector += f",involvedObject.kind={kind}"
        found = self.core.list_namespaced_event(namespace, field_selector=selector)
        out = [
            EventView(
                reason=e.reason or "",
                message=e.message or "",
                type=e.type or "Normal",
                at=_event_time(e),
                kind=e.involved_object.kind or "",
                count=e.count or 1,
            )
            for e in found.items
        ]
        return sorted(out, key=lambda e: e.at.timestamp() if e.at else 0.0)


def _event_time(event: Any) -> datetime | None:
    value = event.last_timestamp or event.event_time or event.first_timestamp
    if value is None and event.metadata is not None:
        value = event.metadata.creation_timestamp
    return value if isinstance(value, datetime) else None


def _account(namespace: Any) -> Account | None:
    meta = namespace.metadata
    try:
        return parse_account(meta.name, meta.labels or {}, meta.annotations or {})
    except AccountError:
        return None


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except ConfigException:
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace")
