"""The workers' torch process group, set up by Ray Train with one change: gloo binds to the network
interface that carries the worker's Ray node address.

Left alone, gloo binds to whatever the host name resolves to, which on many cloud VMs and containers
is 127.0.0.1; ranks on other hosts are then told to connect to 127.0.0.1 and the group never forms
("Gloo connectFullMesh failed ... remote=[127.0.0.1]"). NCCL picks a non-loopback interface itself.
A `GLOO_SOCKET_IFNAME` the user sets is kept.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Optional

from ray.train.torch import TorchConfig

from ..compat import ray_torch_backend

log = logging.getLogger(__name__)

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
_IFNAMSIZ = 16  # Linux: an interface name's buffer, its NUL included


def interface_with_address(address: str) -> Optional[str]:
    """The name of the network interface whose IPv4 address is `address`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:_IFNAMSIZ - 1]))
            except OSError:  # no IPv4 address on it
                continue
            if socket.inet_ntoa(answer[20:24]) == address:
                return name
    return None


def bind_gloo_to_node_address() -> None:
    import ray

    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return
    address = ray.util.get_node_ip_address()
    interface = interface_with_address(address)
    if interface:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    else:
        log.warning("no network interface has this node's address %s; gloo binds to what the host name "
                    "resolves to (set GLOO_SOCKET_IFNAME if ranks on other hosts cannot connect)", address)


class _NodeAddressTorchBackend(ray_torch_backend()):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(bind_gloo_to_node_address)
        super().on_start(worker_group, backend_config)


@dataclass
class NodeAddressTorchConfig(TorchConfig):
    """Ray Train's TorchConfig, gloo bound to each worker's node address."""

    @property
    def backend_cls(self):
        return _NodeAddressTorchBackend
