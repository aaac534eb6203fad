# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the kvm_fleet role asks a hypervisor about its base images (kvm_host_info's ``images``).

The sha256 of each src is hashed on the controller once and cached, as kvm_image's action does
(plugin_utils/_image_digest.py); fleet_images_split reads the answer back. Documented in
plugins/filter/fleet_image_probes.yml.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.plugin_utils._image_digest import base_images, src_sha256


def fleet_image_probes(images) -> list:
    """kvm_host_info's ``images``: the dest and src sha256 of each base image whose sha256 is known here."""
    probes = []
    for image in base_images(images, "fleet_image_probes"):
        sha = src_sha256(image)
        if sha is not None:
            probes.append(dict(dest=image["dest"], sha256=sha))
    return probes


class FilterModule:
    """virtops.kvm.fleet_image_probes."""

    def filters(self) -> dict:
        return {"fleet_image_probes": fleet_image_probes}
