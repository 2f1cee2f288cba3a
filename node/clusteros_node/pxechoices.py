"""receive-pxe's and serve-pxe's places and choices: what the command line offers, in a module
that imports nothing heavier than pathlib, so that every other clusteros-node command (status,
above all) does not pay for the PXE server's imports: 0.49 of status's 0.94 s on an emulated node."""

from pathlib import Path

SET_DIR = Path("/srv/clusteros/pxe")
RUN_DIR = Path("/run/clusteros/pxe")   # served/: the set and this node's boot.ipxe; dnsmasq.leases
BOOTS = ("install", "ask", "ram")
DHCP_MODES = ("auto", "proxy", "range")
HTTP_PORT = 8069
