"""A package for a test to install in a guest: from the image's own archive, never in the image.

apt-get, with a state of its own (no change to the host's apt), fetches the archive's index
for the image's distribution and suite, checks it against the archive's keyring as the
root file system's build does, and downloads one .deb, kept for the next run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from clusteros.rootfs import COMPONENTS, KEYRINGS


def download(view: dict, package: str, into: Path) -> Path:
    """The .deb of `package` for the image's distro and suite, into `into` (reused when there)."""
    into.mkdir(parents=True, exist_ok=True)
    if found := sorted(into.glob(f"{package}_*.deb")):
        return found[-1]
    state = into / "apt"
    for folder in ("lists/partial", "archives/partial"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    (state / "status").write_text("")
    sources = state / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRINGS[view['distro']]}] {view['mirror']} {view['suite']} "
                       f"{' '.join(COMPONENTS[view['distro']])}\n")
    options = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/nonexistent", f"-oDir::State={state}",
               f"-oDir::State::Lists={state}/lists", f"-oDir::State::status={state}/status", f"-oDir::Cache={state}",
               "-oAPT::Architecture=amd64", "-oDebug::NoLocking=1", "-oAcquire::Languages=none",
               "-oAPT::Sandbox::User=root"]
    for command in (["update"], ["download", package]):
        out = subprocess.run(["apt-get", *options, *command], cwd=into, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"apt-get {' '.join(command)}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return sorted(into.glob(f"{package}_*.deb"))[-1]
