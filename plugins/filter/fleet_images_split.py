# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base images a hypervisor still needs from kvm_image, and those it holds already (kvm_fleet role).

Reads kvm_host_info's answer to fleet_image_probes; documented in plugins/filter/fleet_images_split.yml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import a_list, kind
from ansible_collections.virtops.kvm.plugins.plugin_utils._image_digest import base_images, src_sha256


def fleet_images_split(images, probed) -> dict:
    """``{send, settled}``: the base images kvm_image must still run for, and those the host holds already.

    An image is settled only when kvm_host_info answered ``settled`` for its dest with the sha256 its
    src has now; an entry of ``settled`` is what kvm_image reports for an image it leaves alone.
    """
    filt = "fleet_images_split"
    images = base_images(images, filt)
    answers = {}
    for i, answer in enumerate(a_list(probed, filt, "the probed images")):
        if not isinstance(answer, Mapping):
            raise AnsibleFilterError(
                f"{filt}: the probed images[{i}] must be a dict (as kvm_host_info returns it), got {kind(answer)}."
            )
        if answer.get("settled") is True and isinstance(answer.get("dest"), str):
            answers[answer["dest"]] = answer
    send, settled = [], []
    for image in images:
        answer = answers.get(os.path.normpath(image["dest"]))
        sha = src_sha256(image) if answer else None
        if answer is None or sha is None or answer.get("sha256") != sha:
            send.append(image)
            continue
        settled.append(
            dict(
                item=image,
                changed=False,
                dest=answer["dest"],
                sha256=sha,
                size=answer.get("size"),
                copied=False,
                checksum_cached=True,
                changes=[],
                settled=True,
            )
        )
    return dict(send=send, settled=settled)


class FilterModule:
    """virtops.kvm.fleet_images_split."""

    def filters(self) -> dict:
        return {"fleet_images_split": fleet_images_split}
