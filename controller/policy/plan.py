"""The whole-cluster decision: from every object and the time, every status and node spec.

This is the operator's brain as one pure function. The operator gathers a
`Snapshot` (its watch caches), calls `plan`, and writes whatever differs from
what is stored. Nothing here remembers anything between calls: what must
persist (approval, revocation time, warning sent, allocations) lives in the
objects themselves, which is what makes a restart lose nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction

from controller.api import names
from controller.api.account import LABEL_USER, Account, AccountError, parse_account
from controller.api.accountpolicy import POLICY_CONFIGMAP
from controller.api.compact import compact
from controller.api.exemption import GPUExemptionStatus
from controller.api.grant import GPUGrantStatus, GrantApproval
from controller.api.kinds import GPUExemption, GPUGrant, GPUNode, GPURateLimit
from controller.api.node import (
    EnforcementMode,
    GPUNodeSpec,
    LifecycleExemptionEntry,
    ObjectReference,
)
from controller.api.ratelimit import GPURateLimitStatus
from controller.policy import exemptions as exemption_policy
from controller.policy import grants as grant_policy
from controller.policy import retention, screening, usage
from controller.policy.accounts import (
    AccountDecision,
    AccountInputs,
    AccountSettings,
    Stored,
    ours,
    pod_security_patch,
)
from controller.policy.accounts import decide as decide_account
from controller.policy.allocation import (
    Allocation,
    Refusal,
    Request,
    Slot,
    Window,
    allocate_all,
    inventory,
)
from controller.policy.conditions import Want, merge
from controller.policy.effective import EffectiveLimits, NamedLimit, applies_to, effective_limits
from controller.policy.isolation import Failure, failure
from controller.policy.nodes import HostExemption, NodeEffect, next_change, node_spec
from controller.policy.pods import Pod
from controller.policy.quota import resource_equivalents
from controller.policy.records import AuditRecord, EventRecord, ObjectRef
from controller.policy.units import parse_duration_limit, parse_gpu_equivalents


@dataclass(frozen=True)
class Namespace:
    """The parts of a namespace the policy reads."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    terminating: bool = False
    """Being deleted: nothing new is written into it."""


@dataclass(frozen=True)
class Snapshot:
    """Everything the operator watches, as of one moment."""

    namespaces: Sequence[Namespace]
    limits: Sequence[GPURateLimit]
    grants: Sequence[GPUGrant]
    exemptions: Sequence[GPUExemption]
    nodes: Sequence[GPUNode]
    pods: Sequence[Pod] = ()
    managed: Sequence[Stored] = ()
    """The operator's own objects in namespaces (quotas, LimitRanges, policy ConfigMaps)."""


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings."""

    grants: grant_policy.GrantSettings = field(default_factory=grant_policy.GrantSettings)
    default_enforcement: EnforcementMode = "Enforce"
    accounts: AccountSettings = field(default_factory=AccountSettings)
    finished_grant_retention: timedelta | None = retention.DEFAULT_RETENTION
    """How long ended grants are kept before they are deleted; None keeps them forever."""


@dataclass
class Plan:
    """Desired state; the operator writes what differs from the stored objects."""

    grant_status: dict[str, GPUGrantStatus] = field(default_factory=dict)
    approvals: dict[str, GrantApproval] = field(default_factory=dict)
    exemption_status: dict[str, GPUExemptionStatus] = field(default_factory=dict)
    limit_status: dict[str, GPURateLimitStatus] = field(default_factory=dict)
    node_specs: dict[str, GPUNodeSpec] = field(default_factory=dict)
    events: list[EventRecord] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    wake_at: datetime | None = None
    account_problems: dict[str, str] = field(default_factory=dict)
    granted: dict[str, Fraction] = field(default_factory=dict)
    """GPU-equivalents of each subject's active grants (for metrics)."""
    in_use: dict[str, Fraction] = field(default_factory=dict)
    """GPU-equivalents each owner is using, as the agents report (for metrics)."""
    accounts: dict[str, AccountDecision] = field(default_factory=dict)
    """Per account namespace: its ResourceQuota, LimitRange and policy ConfigMap."""
    orphans: list[Stored] = field(default_factory=list)
    """Objects of ours in namespaces that are no longer accounts: to delete."""
    pod_security: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per labelled namespace: the Pod Security Admission labels to (re)write."""
    deletions: list[str] = field(default_factory=list)
    """Ended grants (``namespace/name``) to delete: kept longer than the retention."""
    failures: list[Failure] = field(default_factory=list)
    """Objects that could not be decided this pass (see `controller.policy.isolation`):
    grants, exemptions and limits also carry it in their Ready condition; nodes and
    accounts keep what is stored, and the operator logs and announces them."""

    def wake(self, at: datetime | None) -> None:
        if at is not None and (self.wake_at is None or at < self.wake_at):
            self.wake_at = at


def accounts(namespaces: Sequence[Namespace]) -> tuple[dict[str, Account], dict[str, str]]:
    """Accounts by namespace, and why labelled namespaces that are not valid accounts fail."""
    found: dict[str, Account] = {}
    problems: dict[str, str] = {}
    for ns in namespaces:
        try:
            account = parse_account(ns.name, ns.labels, ns.annotations)
        except AccountError as error:
            problems[ns.name] = f"namespace {ns.name}: {error}"
            continue
        except Exception as error:  # one namespace cannot stop the others (see isolation)
            problems[ns.name] = f"namespace {ns.name}: cannot be read: {error}"
            continue
        if account is not None:
            found[ns.name] = account
    return found, problems


def _existing_allocation(grant: GPUGrant) -> Allocation | None:
    held = grant.status.allocations if grant.status else None
    if not held:
        return None
    node = held[0]
    slots = tuple(Slot(node.node, d.uuid, d.index or 0, d.mig_profile) for d in node.devices)
    return Allocation(node.node, slots)


def _request(grant: GPUGrant, settings: Settings) -> Request:
    placement = grant.spec.placement
    return Request(
        grant_policy.key(grant),
        grant.spec.gpus.count,
        grant_policy.window(grant, settings.grants),
        grant.spec.gpus.mig_profile,
        node_name=placement.node_name if placement else None,
        node_selector=dict(placement.node_selector or {}) if placement else {},
        device_uuids=tuple(placement.device_uuids or ()) if placement else (),
    )


@dataclass(frozen=True)
class _Memo:
    inputs: tuple[object, ...]
    decision: grant_policy.GrantDecision


class DecisionCache:
    """Grant decisions remembered between passes, so a pass only redoes what changed.

    A decision depends on the grant (its resourceVersion), the rest of the world
    that shapes it (limits, accounts, exemptions in force: `world`), its rank
    and devices, and the time only up to its own `wake_at`. Decisions that emit
    anything (events, audit, an approval) are never remembered: they change the
    object, whose next version is decided afresh. The cache only saves work:
    `plan` gives the same answer without it.
    """

    def __init__(self) -> None:
        self._memo: dict[str, _Memo] = {}
        self._accounts: dict[str, tuple[tuple[object, ...], AccountDecision]] = {}

    def get(
        self, key: str, inputs: tuple[object, ...], now: datetime
    ) -> grant_policy.GrantDecision | None:
        memo = self._memo.get(key)
        if memo is None or memo.inputs != inputs:
            return None
        wake = memo.decision.wake_at
        return memo.decision if wake is None or now < wake else None

    def put(
        self, key: str, inputs: tuple[object, ...], decision: grant_policy.GrantDecision
    ) -> None:
        if decision.events or decision.audit or decision.approve is not None:
            self._memo.pop(key, None)
        else:
            self._memo[key] = _Memo(inputs, decision)

    def keep_only(self, keys: set[str]) -> None:
        for gone in self._memo.keys() - keys:
            del self._memo[gone]

    def account(
        self, namespace: str, inputs: tuple[object, ...], now: datetime
    ) -> AccountDecision | None:
        """An account's decision, under the same rules as a grant's (see the class)."""
        memo = self._accounts.get(namespace)
        if memo is None or memo[0] != inputs:
            return None
        wake = memo[1].wake_at
        return memo[1] if wake is None or now < wake else None

    def put_account(
        self, namespace: str, inputs: tuple[object, ...], decision: AccountDecision
    ) -> None:
        if decision.events or decision.audit:
            self._accounts.pop(namespace, None)
        else:
            self._accounts[namespace] = (inputs, _kept(decision))

    def keep_only_accounts(self, namespaces: set[str]) -> None:
        for gone in self._accounts.keys() - namespaces:
            del self._accounts[gone]


def _kept(decision: AccountDecision) -> AccountDecision:
    """The decision as remembered: its document without the list of the account's grants.

    The objects to write (`data` holds the published document as text) stay whole;
    the parsed document is read later only for the account's metrics, which never
    look at its grant entries (a model per grant, kept per account for every pass);
    what is left is compacted like the indexes' objects (`controller.api.compact`).
    """
    document = decision.document
    if document is None:
        return decision
    kept = document.model_copy(update={"grants": [], "pending": []})
    return replace(decision, document=compact(kept))


class _Planner:
    """One planning pass: the indexes every decision shares."""

    def __init__(
        self, snapshot: Snapshot, now: datetime, settings: Settings, cache: DecisionCache | None
    ) -> None:
        self.now, self.settings = now, settings
        self.cache = cache if cache is not None else DecisionCache()
        self.out = Plan()
        self.failed_grants: dict[str, tuple[GPUGrant, Failure]] = {}
        snapshot = self.screen(snapshot)
        self.snapshot = snapshot
        self.world = _world(snapshot, now)
        self.by_namespace, self.out.account_problems = accounts(snapshot.namespaces)
        self.by_user = {a.user: a for a in self.by_namespace.values()}
        self.named = [NamedLimit(lim.metadata.name, lim.spec) for lim in snapshot.limits]
        self._limits: dict[tuple[str, tuple[str, ...]], EffectiveLimits] = {}
        self._exempt: dict[tuple[str, tuple[str, ...]], frozenset[str]] = {}
        self.grants = sorted(
            snapshot.grants,
            key=lambda g: (g.metadata.creation_timestamp or now, grant_policy.key(g)),
        )
        self.by_subject: dict[str, list[GPUGrant]] = {}
        for grant in self.grants:
            self.by_subject.setdefault(grant.spec.subject.name, []).append(grant)

    def screen(self, snapshot: Snapshot) -> Snapshot:
        """Set aside the objects that fail their own checks (`controller.policy.screening`)."""
        now, out = self.now, self.out
        exemptions = screening.exemptions(snapshot.exemptions, now)
        for exemption, failed in exemptions.failed:
            status, events = screening.failed_exemption(exemption, failed, now)
            out.exemption_status[exemption.metadata.name] = status
            out.events += events
            out.failures.append(failed)
        limits = screening.limits(snapshot.limits)
        for limit, failed in limits.failed:
            limit_status, events = screening.failed_limit(limit, failed, now)
            out.limit_status[limit.metadata.name] = limit_status
            out.events += events
            out.failures.append(failed)
        nodes = screening.nodes(snapshot.nodes, now, self.settings.default_enforcement)
        out.failures += [failed for _, failed in nodes.failed]
        grants = screening.grants(snapshot.grants, now, self.settings.grants)
        for grant, failed in grants.failed:
            self.failed_grants[grant_policy.key(grant)] = (grant, failed)
        return replace(
            snapshot,
            exemptions=exemptions.passed,
            limits=limits.passed,
            nodes=nodes.passed,
            grants=grants.passed,
        )

    def fail_grant(self, grant: GPUGrant, error: Exception, during: str) -> None:
        """Take ``grant`` out of the rest of the pass, marked (see `isolation`)."""
        self.failed_grants[grant_policy.key(grant)] = (
            grant,
            failure(screening.grant_ref(grant), error, during),
        )

    def mark_failed_grants(self) -> None:
        for key, (grant, failed) in self.failed_grants.items():
            status, events = screening.failed_grant(grant, failed, self.now)
            self.out.grant_status[key] = status
            self.out.events += events
            self.out.failures.append(failed)

    def limits(self, user: str, groups: tuple[str, ...]) -> EffectiveLimits:
        if (user, groups) not in self._limits:
            self._limits[user, groups] = effective_limits(user, groups, self.named)
        return self._limits[user, groups]

    def context(self, grant: GPUGrant) -> grant_policy.GrantContext:
        namespace = grant.metadata.namespace or ""
        account = self.by_namespace.get(namespace)
        subject = grant.spec.subject.name
        owner = self.by_user.get(subject)
        groups = owner.groups if owner else ()
        if (subject, groups) not in self._exempt:
            in_force = exemption_policy.in_force(
                self.snapshot.exemptions, subject, groups, self.now
            )
            self._exempt[subject, groups] = exemption_policy.exempt_from(in_force)
        return grant_policy.GrantContext(
            account=account,
            account_problem=self.out.account_problems.get(namespace),
            limits=self.limits(subject, groups),
            exempt_from=self._exempt[subject, groups],
            request_rank=grant_policy.request_rank(grant, self.by_subject[subject]),
        )

    def decide(
        self, grant: GPUGrant, ctx: grant_policy.GrantContext, tentative: bool = False
    ) -> grant_policy.GrantDecision:
        """`grants.decide`, remembered across passes while its inputs are unchanged."""
        k = grant_policy.key(grant)
        held = ctx.allocation.uuids if isinstance(ctx.allocation, Allocation) else ctx.allocation
        inputs = (grant.metadata.resource_version, self.world, ctx.request_rank, held, tentative)
        memo_key = f"tentative:{k}" if tentative else k
        found = self.cache.get(memo_key, inputs, self.now)
        if found is None or grant.metadata.resource_version is None:
            found = _sharing_stored(
                grant_policy.decide(grant, ctx, self.now, self.settings.grants), grant
            )
            self.cache.put(memo_key, inputs, found)
        return found

    def run(self) -> Plan:
        out, now = self.out, self.now
        for exemption in self.snapshot.exemptions:
            decided = exemption_policy.decide(exemption, now)
            out.exemption_status[exemption.metadata.name] = decided.status
            out.events += decided.events
            out.audit += decided.audit
            out.wake(decided.wake_at)

        contexts: dict[str, grant_policy.GrantContext] = {}
        for grant in self.grants:
            try:
                contexts[grant_policy.key(grant)] = self.context(grant)
            except Exception as error:  # this grant alone (see controller.policy.isolation)
                self.fail_grant(grant, error, "finding its account and limits")
        self.drop_failed_grants()
        allocations = self.allocate(contexts)

        # Pass 2: every grant's decision, with the devices it holds.
        decisions: dict[str, grant_policy.GrantDecision] = {}
        effects: list[NodeEffect] = []
        for grant in self.grants:
            k = grant_policy.key(grant)
            ctx = replace(contexts[k], allocation=allocations.get(k))
            try:
                decision = self.decide(grant, ctx)
                effect = _node_effect(grant, decision, ctx.account, ctx.limits)
            except Exception as error:  # this grant alone
                self.fail_grant(grant, error, "deciding it")
                continue
            decisions[k] = decision
            if decision.approve is not None:
                out.approvals[k] = decision.approve
            out.events += decision.events
            out.audit += decision.audit
            out.wake(decision.wake_at)
            if effect is not None:
                effects.append(effect)
        self.drop_failed_grants()
        self.account_usage(decisions, contexts)
        self.drop_failed_grants()
        self.account_objects(decisions)
        self.retire()
        self.mark_failed_grants()

        self.write_node_specs(effects)
        self.limit_statuses()
        return out

    def write_node_specs(self, effects: Sequence[NodeEffect]) -> None:
        """Every node's spec; a node whose spec cannot be computed keeps its stored one."""
        out, now = self.out, self.now
        host_exemptions = _host_exemptions(self.snapshot.exemptions, self.by_user, now)
        frozen = {(g.metadata.namespace, g.metadata.name) for g, _ in self.failed_grants.values()}
        for node in self.snapshot.nodes:
            name = node.metadata.name
            scoped = [x for scope, x in host_exemptions if scope is None or name in scope]
            try:
                spec = node_spec(
                    name,
                    labels=dict(node.metadata.labels),
                    effects=effects,
                    exemptions=scoped,
                    current=node.spec,
                    now=now,
                    default_mode=self.settings.default_enforcement,
                    lifecycle=self.lifecycle_exemptions(name),
                    frozen=frozen,
                )
            except Exception as error:  # this node keeps its stored spec
                out.failures.append(failure(screening.node_ref(node), error, "writing its spec"))
                continue
            out.node_specs[name] = spec
            out.wake(next_change(spec, now))

    def limit_statuses(self) -> None:
        out = self.out
        for limit in self.snapshot.limits:
            try:
                out.limit_status[limit.metadata.name] = self.limit_status(limit)
            except Exception as error:  # this limit alone
                failed = failure(screening.limit_ref(limit), error, "reporting its status")
                status, events = screening.failed_limit(limit, failed, self.now)
                out.limit_status[limit.metadata.name] = status
                out.events += events
                out.failures.append(failed)

    def retire(self) -> None:
        """Ended grants kept longer than the retention: delete (see `policy.retention`)."""
        keep = self.settings.finished_grant_retention
        if keep is None:
            return
        for grant in self.grants:
            k = grant_policy.key(grant)
            status = self.out.grant_status[k]
            due = retention.deletable_at(grant, status, keep)
            if due is None:
                continue
            if due > self.now:
                self.out.wake(due)
                continue
            event, record = retention.deletion_records(grant, status, keep)
            self.out.deletions.append(k)
            self.out.events.append(event)
            self.out.audit.append(record)

    def drop_failed_grants(self) -> None:
        """Leave grants that failed out of the steps still to come."""
        if not self.failed_grants:
            return
        self.grants = [g for g in self.grants if grant_policy.key(g) not in self.failed_grants]
        self.by_subject = {
            subject: kept
            for subject, grants in self.by_subject.items()
            if (kept := [g for g in grants if grant_policy.key(g) not in self.failed_grants])
        }

    def allocate(
        self, contexts: Mapping[str, grant_policy.GrantContext]
    ) -> Mapping[str, Allocation | Refusal]:
        """Pass 1: devices for reserving grants that are approved (or auto-approvable now)
        and not over, in creation order; pending requests hold none. Devices that grants
        set aside in this pass still hold (their stored allocations) are given to no one."""
        requests, existing = [], {}
        for grant in filter(grant_policy.reserves, self.grants):
            k = grant_policy.key(grant)
            try:
                tentative = self.decide(grant, contexts[k], tentative=True)
                if tentative.state in ("Approved", "Scheduled", "Active"):
                    requests.append(_request(grant, self.settings))
                    kept = _existing_allocation(grant)
                    if kept is not None:
                        existing[k] = kept
            except Exception as error:  # this grant alone
                self.fail_grant(grant, error, "deciding whether it holds devices")
        self.drop_failed_grants()
        held = {
            d.uuid
            for grant, _ in self.failed_grants.values()
            for n in (grant.status.allocations if grant.status else None) or ()
            for d in n.devices
        }
        slots = {
            node: [s for s in found if s.uuid not in held]
            for node, found in inventory(self.snapshot.nodes).items()
        }
        labels = {n.metadata.name: dict(n.metadata.labels) for n in self.snapshot.nodes}
        try:
            return allocate_all(requests, existing, slots, labels)
        except Exception:  # find the requests that break it, in order, and set them aside
            kept_requests: list[Request] = []
            for request in requests:
                try:
                    allocate_all([*kept_requests, request], existing, slots, labels)
                    kept_requests.append(request)
                except Exception as error:
                    grant = next(g for g in self.grants if grant_policy.key(g) == request.key)
                    self.fail_grant(grant, error, "allocating its devices")
            self.drop_failed_grants()
            return allocate_all(kept_requests, existing, slots, labels)

    def account_usage(
        self,
        decisions: Mapping[str, grant_policy.GrantDecision],
        contexts: Mapping[str, grant_policy.GrantContext],
    ) -> None:
        """Charge each user's GPU use to their active grants; record it in status."""
        nodes = self.snapshot.nodes
        equivalents = usage.device_equivalents(nodes)
        in_use = usage.devices_in_use(nodes)
        for user, owned in in_use.items():
            self.out.in_use[user] = sum(
                (equivalents.get(u, Fraction(0)) for u in owned), Fraction(0)
            )
        charged: dict[str, tuple[Fraction, Fraction]] = {}
        for user, grants in self.by_subject.items():
            try:
                charged |= self.charge(
                    user,
                    grants,
                    decisions=decisions,
                    contexts=contexts,
                    in_use=in_use,
                    equivalents=equivalents,
                )
            except Exception as error:  # this subject's grants alone
                for grant in grants:
                    self.fail_grant(grant, error, f"charging {user}'s GPU use")
        self.drop_failed_grants()
        for grant in self.grants:
            k = grant_policy.key(grant)
            new = decisions[k].status
            try:
                old = grant.status or GPUGrantStatus()
                record = usage.account(old, new, charged.get(k), self.now)
            except Exception as error:  # this grant alone
                self.fail_grant(grant, error, "accounting its usage")
                continue
            self.out.grant_status[k] = (
                new if record is new.usage else new.model_copy(update={"usage": record})
            )
            if new.state == "Active":
                self.out.granted[grant.spec.subject.name] = self.out.granted.get(
                    grant.spec.subject.name, Fraction(0)
                ) + usage.fraction(new.gpu_equivalents or "0")

    def charge(
        self,
        user: str,
        grants: Sequence[GPUGrant],
        *,
        decisions: Mapping[str, grant_policy.GrantDecision],
        contexts: Mapping[str, grant_policy.GrantContext],
        in_use: Mapping[str, set[str]],
        equivalents: Mapping[str, Fraction],
    ) -> dict[str, tuple[Fraction, Fraction]]:
        """What each of ``user``'s active grants is charged (see `usage.charge`)."""
        active = [
            g
            for g in grants
            if "Active"
            in (decisions[grant_policy.key(g)].state, g.status.state if g.status else None)
        ]
        if not active:
            return {}
        held = {
            grant_policy.key(g): tuple(
                d.uuid
                for n in decisions[grant_policy.key(g)].status.allocations or ()
                for d in n.devices
            )
            for g in active
            if grant_policy.reserves(g)
        }
        gpu = contexts[grant_policy.key(active[0])].limits.spec.gpu
        base = parse_gpu_equivalents(gpu.max_gpu_equivalents or 0) if gpu else Fraction(0)
        return usage.charge(active, held, in_use.get(user, set()), equivalents, base)

    def account_objects(self, decisions: Mapping[str, grant_policy.GrantDecision]) -> None:
        """Each account's quota, LimitRange and published policy; orphans to delete."""
        pods: dict[str, list[Pod]] = {}
        for pod in self.snapshot.pods:
            pods.setdefault(pod.namespace, []).append(pod)
        stored = ours(self.snapshot.managed)
        equivalents = resource_equivalents(self.snapshot.nodes)
        labelled = {
            ns.name
            for ns in self.snapshot.namespaces
            if LABEL_USER in ns.labels and not ns.terminating
        }
        terminating = {ns.name for ns in self.snapshot.namespaces if ns.terminating}
        for namespace, account in sorted(self.by_namespace.items()):
            if namespace not in labelled:
                continue
            published = stored.get(("ConfigMap", namespace))
            grants = [
                (g, decisions[grant_policy.key(g)].status)
                for g in self.by_subject.get(account.user, ())
                if g.metadata.namespace == namespace
            ]
            mine = pods.get(namespace, [])
            reported = self.out.in_use.get(account.user, Fraction(0))
            content = dict(published.content) if published else None
            uid = published.uid if published else None
            inputs = (
                self.world,
                account,
                mine,
                [(g.metadata.resource_version, status) for g, status in grants],
                reported,
                equivalents,
                content,
                uid,
                self.settings.accounts,
            )
            decided = self.cache.account(namespace, inputs, self.now)
            if decided is None:
                try:
                    decided = decide_account(
                        AccountInputs(
                            account=account,
                            limits=self.limits(account.user, account.groups),
                            exemptions=exemption_policy.in_force(
                                self.snapshot.exemptions, account.user, account.groups, self.now
                            ),
                            grants=grants,
                            pods=mine,
                            equivalents=equivalents,
                            reported=reported,
                            published=content,
                            published_uid=uid,
                        ),
                        self.now,
                        self.settings.accounts,
                    )
                except Exception as error:  # this account keeps its stored objects
                    about = ObjectRef("ConfigMap", POLICY_CONFIGMAP, namespace)
                    self.out.failures.append(failure(about, error, "deciding its account"))
                    continue
                self.cache.put_account(namespace, inputs, decided)
            self.out.accounts[namespace] = decided
            self.out.events += decided.events
            self.out.audit += decided.audit
            self.out.wake(decided.wake_at)
        self.cache.keep_only_accounts(set(self.out.accounts))
        # Only namespaces that exist and lost the account label are cleaned up; an
        # account whose annotations are broken keeps its objects (and its budget record).
        accounts_or_gone = {ns.name for ns in self.snapshot.namespaces if LABEL_USER in ns.labels}
        accounts_or_gone |= terminating
        known = {ns.name for ns in self.snapshot.namespaces}
        self.out.orphans = [
            m
            for (_, namespace), m in sorted(stored.items())
            if namespace in known and namespace not in accounts_or_gone
        ]
        # Every labelled namespace, broken accounts included: their pods are judged too.
        for ns in self.snapshot.namespaces:
            if ns.name in labelled:
                patch = pod_security_patch(ns.labels, ns.annotations, self.settings.accounts)
                if patch:
                    self.out.pod_security[ns.name] = patch

    def lifecycle_exemptions(self, node: str) -> list[LifecycleExemptionEntry]:
        """Idle and runtime exemptions in force on ``node``, expanded to the users they cover."""
        entries = []
        for exemption in sorted(self.snapshot.exemptions, key=lambda e: e.metadata.name):
            spec = exemption.spec
            rules = sorted({"IdleTimeout", "MaxRuntime"} & set(spec.exempt_from))
            if not rules or exemption_policy.state_at(exemption, self.now) != "Active":
                continue
            if spec.nodes and node not in spec.nodes:
                continue
            members = [
                a
                for a in self.by_namespace.values()
                if (spec.subject.kind == "User" and a.user == spec.subject.name)
                or (spec.subject.kind == "Group" and spec.subject.name in a.groups)
            ]
            if spec.subject.kind == "User" and not members:
                members = [Account(namespace="-", user=spec.subject.name)]
            for account in sorted(members, key=lambda a: a.user):
                entries.append(
                    LifecycleExemptionEntry(
                        user=account.user,
                        linux_user=account.linux_user,
                        exempt_from=rules,
                        until=spec.expires_at,
                        source=ObjectReference(kind="GPUExemption", name=exemption.metadata.name),
                    )
                )
        return entries

    def limit_status(self, limit: GPURateLimit) -> GPURateLimitStatus:
        users = [a for a in self.by_namespace.values() if applies_to(limit.spec, a.user, a.groups)]
        name = limit.metadata.name
        conflicts = sorted(
            {
                f"{c.field} (with GPURateLimit/{c.loser if c.winner == name else c.winner})"
                for a in users
                for c in self.limits(a.user, a.groups).conflicts
                if name in (c.winner, c.loser)
            }
        )
        wanted = [Want("Ready", True, "Applied", f"applies to {len(users)} account(s)")]
        if conflicts:
            wanted.append(
                Want(
                    "PriorityConflict",
                    True,
                    "SamePriority",
                    f"another Group limit at priority {limit.spec.priority} sets the same fields "
                    f"differently; resolved by name: {', '.join(conflicts)}",
                )
            )
        old = limit.status or GPURateLimitStatus()
        subjects = ", ".join(f"{s.kind}:{s.name}" for s in limit.spec.subjects)
        return GPURateLimitStatus(
            observed_generation=limit.metadata.generation,
            conditions=merge(old.conditions, wanted, self.now, limit.metadata.generation),
            subjects=subjects if len(subjects) <= 1024 else subjects[:1021] + "...",
            matched_users=len(users),
        )


def _world(snapshot: Snapshot, now: datetime) -> int:
    """A fingerprint of what every grant decision shares: limits, accounts, exemptions now."""
    return hash(
        (
            tuple((lim.metadata.name, lim.metadata.resource_version) for lim in snapshot.limits),
            tuple(
                (ns.name, tuple(sorted(ns.labels.items())), tuple(sorted(ns.annotations.items())))
                for ns in snapshot.namespaces
                if any(k.startswith(names.PREFIX) for k in ns.labels)
            ),
            tuple(
                (e.metadata.name, e.metadata.resource_version, exemption_policy.state_at(e, now))
                for e in snapshot.exemptions
            ),
        )
    )


def plan(
    snapshot: Snapshot,
    now: datetime,
    settings: Settings = Settings(),
    cache: DecisionCache | None = None,
) -> Plan:
    """Decide everything; see the module docstring. ``cache`` only saves work."""
    planner = _Planner(snapshot, now, settings, cache)
    decided = planner.run()
    keys = {grant_policy.key(g) for g in snapshot.grants}
    planner.cache.keep_only(keys | {f"tentative:{k}" for k in keys})
    return decided


def _sharing_stored(
    decision: grant_policy.GrantDecision, grant: GPUGrant
) -> grant_policy.GrantDecision:
    """The decision holding the grant's stored status itself when it decided the same.

    Most passes decide what is already stored; the cache then keeps the index's
    status object rather than an equal copy (a list of conditions per grant), and
    the writer sees at a glance (`is`) that there is nothing to write.
    """
    stored = grant.status
    if stored is None or decision.status is stored or decision.status != stored:
        return decision
    return replace(decision, status=stored)


def _node_effect(
    grant: GPUGrant,
    decision: grant_policy.GrantDecision,
    account: Account | None,
    limits: EffectiveLimits,
) -> NodeEffect | None:
    status = decision.status
    held = status.allocations
    if not held:
        return None
    assert status.window is not None
    ended_at = None
    if decision.state == "Revoked":
        ended_at = status.revoked_at
    elif decision.state == "Expired":
        ended_at = status.window.end
    grants = limits.spec.grants
    assert grants is not None
    grace = parse_duration_limit(grants.revocation_grace or "5m") or timedelta(0)
    return NodeEffect(
        source=ObjectReference(
            kind="GPUGrant", name=grant.metadata.name, namespace=grant.metadata.namespace
        ),
        user=grant.spec.subject.name,
        linux_user=account.linux_user if account else None,
        node=held[0].node,
        devices=tuple(d.uuid for d in held[0].devices),
        window=Window(status.window.start, status.window.end),
        host=grant.spec.access == "Host",
        live=decision.state in ("Scheduled", "Active"),
        ended_at=ended_at,
        end_reason=(
            grant.spec.revocation.reason
            if grant.spec.revocation
            else "grant deleted"
            if decision.state == "Revoked"
            else "grant expired"
        ),
        grace=grace,
        soft=bool(grants.soft_revocation),
    )


def _host_exemptions(
    exemptions: Sequence[GPUExemption], by_user: Mapping[str, Account], now: datetime
) -> list[tuple[frozenset[str] | None, HostExemption]]:
    out = []
    for exemption in exemptions:
        spec = exemption.spec
        if "HostAccess" not in spec.exempt_from or spec.subject.kind != "User":
            continue
        if exemption_policy.state_at(exemption, now) != "Active":
            continue
        account = by_user.get(spec.subject.name)
        if account is None or account.linux_user is None:
            continue
        scope = frozenset(spec.nodes) if spec.nodes else None
        out.append(
            (
                scope,
                HostExemption(
                    ObjectReference(kind="GPUExemption", name=exemption.metadata.name),
                    spec.subject.name,
                    account.linux_user,
                    spec.expires_at,
                ),
            )
        )
    return out
