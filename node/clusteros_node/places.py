"""Where the agent keeps things. One value, so that a test (or the 64-agent rack test) can move them all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Places:
    run: Path = Path("/run/clusteros")                        # status, identity, control socket
    lib: Path = Path("/var/lib/clusteros")                    # keys, members, credential: survives reboots
    etc: Path = Path("/etc/clusteros")                        # the spec and the owner's key, from the image
    imported: Path = Path("/run/credentials/@system")         # what systemd imported from the host (fw_cfg)

    @property
    def credential_sources(self) -> tuple[Path, ...]:
        return (self.imported / "clusteros-credential", self.lib / "credential.json")

    @property
    def owner_key(self) -> Path:
        return self.etc / "owner.pub"

    @property
    def control_socket(self) -> Path:
        return self.run / "control.sock"

    @classmethod
    def under(cls, root: Path) -> "Places":
        return cls(root / "run", root / "lib", root / "etc", root / "credentials")
