"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

This is what tests and ``ds01 dev up`` run against, so CRD schemas, CEL rules,
admission policies, RBAC and quota are judged by Kubernetes itself. Users are
client certificates signed by a throwaway CA; authorization is Node and RBAC,
with NodeRestriction, so the embedded node's kubelet (`devcluster.node`) is held
to exactly what a lab's kubelets are. The controller-manager runs a named set of
controllers: the ones a namespace-per-user design needs (quota, namespaces,
service accounts and tokens, garbage collection, owner controllers for
reaping, DaemonSets for the node agent) and never podgc, which would delete
every pod bound to a node that does not exist (the test tiers bind pods to
nodes that have no kubelet).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.devcluster import binaries as binaries_module
from controller.devcluster.containerd import NODE_ADDRESS
from controller.devcluster.kubeconfig import write_kubeconfig
from controller.devcluster.pki import CertificateAuthority, KeyPair, service_account_keys
from controller.devcluster.process import ManagedProcess, PidFile, spawn, wait_until
from controller.runtime import fieldmanager

DEFAULT_CONTROLLERS = (
    "resourcequota-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    # Lifts the not-ready taint a kubelet registers its node with, once it is Ready.
    "node-lifecycle-controller",
    # Docker-host agents' certificates: CertificateSigningRequests signed with the
    # cluster CA once approved (`ds01 agent enroll`), and cleaned up afterwards.
    "certificatesigningrequest-signing-controller",
    "certificatesigningrequest-cleaner-controller",
)
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "ds01-dev-admin"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
"""Who the apiserver is to kubelets (logs, exec): a member of system:masters."""


class ControlPlaneError(RuntimeError):
    """The control plane failed to start; the message carries the failing log."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command failed; the message carries what kubectl printed."""

    def __str__(self) -> str:
        command = " ".join(str(a) for a in self.cmd[3:])
        return f"kubectl {command} failed ({self.returncode}): {str(self.stderr).strip()}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalCluster:
    """One local control plane rooted in ``workdir``.

    Use as a context manager, or call ``start`` and ``stop``. ``stop`` leaves no
    process behind: every child runs in its own process group, recorded in a pid
    file, and is killed if it does not exit on SIGTERM.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        binaries: binaries_module.Binaries | None = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ds01-cluster-"))
        self.controllers = tuple(controllers)
        self.binaries = binaries or binaries_module.ensure()
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.processes: list[ManagedProcess] = []
        self.pid_file = PidFile(self.workdir / "pids.json")
        self.port = 0
        self._ca: CertificateAuthority | None = None

    # -- public surface ----------------------------------------------------

    @classmethod
    def attach(cls, workdir: Path) -> LocalCluster:
        """A handle on a cluster another process started in ``workdir``."""
        server = (Path(workdir) / "server").read_text().strip()
        cluster = cls(workdir, binaries=binaries_module.planned())
        cluster.port = int(server.rsplit(":", 1)[1])
        return cluster

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (group ``system:masters``)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_pem(self) -> bytes:
        return (self.workdir / "pki" / "ca.crt").read_bytes()

    def start(self, deadline_s: float = 180.0) -> LocalCluster:
        """Start etcd, the apiserver and the controller-manager; return once all are ready."""
        stop_recorded(self.workdir)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._write_pki()
        try:
            self._start_etcd(deadline_s)
            self._start_apiserver(deadline_s)
            self._start_controller_manager(deadline_s)
            wait_until(
                lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
                deadline_s,
                "the default ServiceAccount to be created by kube-controller-manager",
            )
        except BaseException:
            self.stop()
            raise
        (self.workdir / "server").write_text(self.server)
        return self

    def stop(self) -> None:
        """Stop every process in reverse start order; safe to call more than once."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        stop_recorded(self.workdir)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Mint a client certificate for ``user`` in ``groups`` and write its kubeconfig."""
        # No ':' in the file name: KUBECONFIG and the Python client split paths on it.
        label = f"{user}@{'+'.join(groups) or 'nogroups'}"
        safe = "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in label)
        path = self.workdir / "users" / f"{safe}.kubeconfig"
        pair = self._authority().client(user, tuple(groups))
        return write_kubeconfig(path, self.server, self.ca_pem, user, pair)

    def token_kubeconfig(self, name: str, token: str) -> Path:
        """Write a kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
        return write_kubeconfig(
            self.workdir / "users" / f"{name}.kubeconfig", self.server, self.ca_pem, name, token
        )

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster."""
        command = [str(self.binaries.kubectl), "--kubeconfig", str(kubeconfig or self.kubeconfig)]
        result = subprocess.run(
            [*command, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def apply(
        self, *source: str, stdin: str | None = None, force: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Server-side apply ``source`` (`-k DIR`, `-f -`) as field manager `ds01-dev`.

        What `ds01 dev up` applies (CRDs, RBAC, samples) is its own, so with
        ``force`` its values win a conflict with an edit or with an earlier run's
        manager (`kubectl`, before managers were named): `up` then succeeds over
        any earlier state. Objects that other components write too (a GPUNode:
        its spec is the operator's) are applied without ``force``, so that
        claiming one of their fields is a loud conflict, never a silent overwrite.
        """
        forcing = ("--force-conflicts",) if force else ()
        return self.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={fieldmanager.DEV}",
            *forcing,
            *source,
            stdin=stdin,
        )

    # -- start-up ------------------------------------------------------------

    def _authority(self) -> CertificateAuthority:
        if self._ca is None:
            pki = self.workdir / "pki"
            self._ca = CertificateAuthority.load(
                KeyPair((pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes())
            )
        return self._ca

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self._ca = CertificateAuthority()
        self._ca.key_pair.write(pki, "ca")
        self._ca.serving(
            [
                "localhost",
                "127.0.0.1",
                # The embedded node's pods reach the apiserver through a relay there.
                NODE_ADDRESS,
                SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
        ).write(pki, "apiserver")
        self._ca.client(ADMIN_USER, ("system:masters",)).write(pki, "admin")
        self._ca.client("system:kube-controller-manager").write(pki, "controller-manager")
        self._ca.client(KUBELET_CLIENT_USER, ("system:masters",)).write(pki, "kubelet-client")
        service_account_keys().write(pki, "sa")

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        stop_grace_s: float = 10.0,
    ) -> ManagedProcess:
        """Start a process that belongs to this cluster: logged, recorded, stopped with it."""
        log = self.workdir / "logs" / f"{name}.log"
        process = spawn(name, argv, log, env=env, stop_grace_s=stop_grace_s)
        self.processes.append(process)
        self.pid_file.write(self.processes)
        return process

    def service_account_kubeconfig(self, namespace: str, name: str, duration: str = "168h") -> Path:
        """A kubeconfig that authenticates as a ServiceAccount, with a fresh bound token."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        return self.token_kubeconfig(f"{namespace}.{name}", token)

    def _wait_ready(
        self, process: ManagedProcess, probe: Any, deadline_s: float, what: str
    ) -> None:
        def ready() -> bool:
            if not process.alive():
                raise ControlPlaneError(
                    f"{process.name} exited during start-up; last lines of {process.log}:\n"
                    + process.log_tail()
                )
            return bool(probe())

        try:
            wait_until(ready, deadline_s, what)
        except TimeoutError as error:
            raise ControlPlaneError(
                f"{error}; last lines of {process.log}:\n{process.log_tail()}"
            ) from None

    def _start_etcd(self, deadline_s: float) -> None:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        process = self.spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=ds01-dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=ds01-dev=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._etcd_url = url
        self._wait_ready(process, lambda: http_ok(f"{url}/health"), deadline_s, "etcd healthy")

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (etcd and the controller-manager keep running)."""
        for process in [p for p in self.processes if p.name == "kube-apiserver"]:
            process.stop()
            self.processes.remove(process)
        self.pid_file.write(self.processes)

    def start_apiserver(self, deadline_s: float = 120.0) -> None:
        """Start kube-apiserver again, on the same port, after `stop_apiserver`."""
        self._start_apiserver(deadline_s, port=self.port)

    def _start_apiserver(self, deadline_s: float, port: int | None = None) -> None:
        pki = self.workdir / "pki"
        self.port = port or free_port()
        process = self.spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self._etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                # Node: kubelets (the embedded node's) get exactly their own node's
                # objects; NodeRestriction stops one writing another node or labels it
                # may not set. Harmless where no kubelet runs.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-issuer={ISSUER}",
                f"--api-audiences={ISSUER}",
                f"--service-account-key-file={pki / 'sa.crt'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        write_kubeconfig(
            self.kubeconfig,
            self.server,
            (pki / "ca.crt").read_bytes(),
            ADMIN_USER,
            KeyPair((pki / "admin.crt").read_bytes(), (pki / "admin.key").read_bytes()),
        )
        self._wait_ready(
            process, lambda: self._get("/readyz") is not None, deadline_s, "kube-apiserver ready"
        )

    def _start_controller_manager(self, deadline_s: float) -> None:
        pki = self.workdir / "pki"
        kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            self.server,
            (pki / "ca.crt").read_bytes(),
            "system:kube-controller-manager",
            KeyPair(
                (pki / "controller-manager.crt").read_bytes(),
                (pki / "controller-manager.key").read_bytes(),
            ),
        )
        port = free_port()
        process = self.spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                f"--controllers={','.join(self.controllers)}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )
        self._wait_ready(
            process,
            lambda: http_ok(f"https://127.0.0.1:{port}/healthz", insecure=True),
            deadline_s,
            "kube-controller-manager healthy",
        )

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def _get(self, path: str) -> Any:
        """GET ``path`` as admin; the decoded body, or None on any failure."""
        try:
            with urllib.request.urlopen(
                self.server + path, context=self._ssl_context(), timeout=5
            ) as response:
                body = response.read()
        except (urllib.error.URLError, OSError):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")


def http_ok(url: str, insecure: bool = False) -> bool:
    context = None
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def stop_recorded(workdir: Path) -> int:
    """Stop processes a cluster in ``workdir`` recorded; return how many were running.

    Used before a start (a crashed earlier run must not hold the data directory)
    and by ``ds01 dev down`` from a different process than the one that started it.
    """
    pid_file = PidFile(Path(workdir) / "pids.json")
    running = [p for p in pid_file.read() if p.alive()]
    for process in reversed(running):
        if process.pid != os.getpid():
            process.stop()
    pid_file.remove()
    # A real node's pods, shims, mounts and cgroups outlive its processes.
    from controller.devcluster import node

    node.teardown(Path(workdir))
    return len(running)
