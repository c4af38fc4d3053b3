"""Container labels are believed only with the gateway's signature."""

from __future__ import annotations

from controller.agent.docker import Container
from controller.agent.inventory import DeviceNode, Gpu, Inventory, MigSlice
from controller.agent.scan import allocated, read_passwd
from controller.agent.trust import sign, verify
from controller.api import names

KEY = b"k" * 32
G0, G1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-11111111-1111-4111-8111-111111111111"
M1 = "MIG-11111111-1111-4111-8111-00000000000a"
INVENTORY = Inventory(
    (
        Gpu(0, G0, "A100", 40960, DeviceNode("/dev/nvidia0", 195, 0)),
        Gpu(
            1,
            G1,
            "A100",
            40960,
            DeviceNode("/dev/nvidia1", 195, 1),
            mig_enabled=True,
            mig=(MigSlice(M1, "1g.10gb", 1, 0, 1, 0),),
        ),
    )
)


def test_signed_labels_verify_and_tampering_fails() -> None:
    labels = sign(KEY, "train", "alice@lab.example", [M1])
    stamp = verify(KEY, "train", labels)
    assert stamp is not None and stamp.owner == "alice@lab.example" and stamp.devices == (M1,)
    assert verify(KEY, "other-name", labels) is None  # copied to another container
    assert verify(KEY, "train", {**labels, names.OWNER: "mallory"}) is None  # owner edited
    assert verify(b"x" * 32, "train", labels) is None  # not the gateway's key
    assert verify(None, "train", labels) is None  # no key configured: trust nothing
    assert verify(KEY, "train", {names.OWNER: "alice"}) is None  # unsigned (DS01's hole)
    assert names.SIGNATURE in labels


def test_allocated_devices_from_requests_mappings_and_the_gateway() -> None:
    by_request = Container("c1", "a", {}, "running", device_ids=("0",))
    assert allocated(by_request, INVENTORY, ()) == {G0}
    by_uuid = Container("c2", "b", {}, "running", device_ids=(G1,))
    assert allocated(by_uuid, INVENTORY, ()) == {G1}
    by_node = Container("c3", "c", {}, "running", device_paths=("/dev/nvidia1", "/dev/null"))
    assert allocated(by_node, INVENTORY, ()) == {G1}
    everything = Container("c4", "d", {}, "running", gpu_request_all=True)
    assert allocated(everything, INVENTORY, ()) == {G0, G1}
    assert allocated(Container("c5", "e", {}, "running"), INVENTORY, (M1, "GPU-unknown")) == {M1}


def test_passwd_is_read_and_a_missing_file_means_no_logins(tmp_path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n"
    )
    assert read_passwd(passwd) == {0: "root", 1000: "alice"}
    assert read_passwd(tmp_path / "missing") == {}
