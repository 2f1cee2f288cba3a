"""The node's firewall (nftables): SSH on every interface; the cluster's own traffic on the LAN and wg0 only.

On the uplink a node answers SSH, ping and DHCP and nothing else: slurmd, slurmctld,
the K3s API, NFS and the agent are reached over the cluster LAN and wg0 only. The
agent's announcements are rate-limited by the kernel before they reach it, so a flood
cannot keep it from its work. Pod traffic of K3s (cni0, flannel) is let in too.
"""

from __future__ import annotations

from clusteros_node import system

TABLE = "clusteros"
ANNOUNCE_RATE = "200/second burst 400 packets"


def ruleset(lan: str | None, agent_port: int) -> str:
    """The whole table, replaced at once. Without a known LAN interface, only wg0 counts as the cluster's."""
    cluster = ", ".join(f'"{name}"' for name in ([lan] if lan else []) + ["wg0"])
    flood = (f'        iifname "{lan}" udp dport {agent_port} limit rate over {ANNOUNCE_RATE} drop\n' if lan else "")
    return f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state invalid drop
        meta l4proto {{ 1, 58 }} accept  # ICMP, ICMPv6: by number, as the image has no /etc/protocols
        tcp dport 22 accept
        udp sport 67 udp dport 68 accept
        udp sport 547 udp dport 546 accept
{flood}        iifname {{ {cluster} }} accept
        iifname {{ "cni0", "flannel.1" }} accept
    }}
}}
"""


def apply(lan: str | None, agent_port: int) -> None:
    system.run("nft", "-f", "-", stdin=ruleset(lan, agent_port))
