"""fleet_image_probes and fleet_images_split: the kvm_fleet role skips kvm_image for bases a host holds already.

Real files on the controller side (hashed into a cache under a tmp XDG_CACHE_HOME); the answers are
what kvm_host_info returns in ``images``.
"""

from __future__ import annotations

import hashlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet_image_probes import fleet_image_probes
from ansible_collections.virtops.kvm.plugins.filter.fleet_images_split import fleet_images_split

DATA = b"a base image"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "base.qcow2"
    path.write_bytes(DATA)
    return str(path)


def answer(dest, settled=True, sha256=SHA, **more):
    return dict(dest=dest, settled=settled, sha256=sha256, reason="" if settled else "missing", **more)


def test_probes_name_each_dest_with_the_sha256_of_its_src(src, tmp_path):
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"other")
    images = [dict(src=src, dest="/var/lib/a.qcow2"), dict(src=str(other), dest="/var/lib/b.qcow2")]
    assert fleet_image_probes(images) == [
        dict(dest="/var/lib/a.qcow2", sha256=SHA),
        dict(dest="/var/lib/b.qcow2", sha256=hashlib.sha256(b"other").hexdigest()),
    ]
    assert (tmp_path / "cache" / "virtops-kvm" / "image-sha256.json").is_file()  # kvm_image's own cache


@pytest.mark.parametrize(
    "image",
    [
        dict(src="base.qcow2", dest="/var/lib/a.qcow2"),  # relative: kvm_image finds it in files/
        dict(src="/nonexistent/base.qcow2", dest="/var/lib/a.qcow2"),
        dict(src="/dev/null", dest="/var/lib/a.qcow2"),  # not a regular file
        dict(src="SRC", dest="/var/lib/a.qcow2", checksum="0" * 64),  # src does not match it
        dict(src="SRC", dest="/var/lib/a.qcow2", checksum="not a sha256"),
    ],
)
def test_images_whose_sha256_is_not_known_here_are_not_probed_and_are_sent(src, image):
    image = dict(image, src=src if image["src"] == "SRC" else image["src"])
    assert fleet_image_probes([image]) == []
    # even an answer that says settled does not spare kvm_image (it says what is wrong)
    split = fleet_images_split([image], [answer(image["dest"])])
    assert split == dict(send=[image], settled=[])


def test_a_checksum_that_src_matches_is_probed(src):
    image = dict(src=src, dest="/var/lib/a.qcow2", checksum=f"sha256:{SHA}")
    assert fleet_image_probes([image]) == [dict(dest="/var/lib/a.qcow2", sha256=SHA)]


def test_a_settled_answer_for_the_same_content_skips_kvm_image_and_reports_like_it(src):
    image = dict(src=src, dest="/var/lib/images//a.qcow2")
    split = fleet_images_split([image], [answer("/var/lib/images/a.qcow2", size=len(DATA))])
    assert split["send"] == []
    assert split["settled"] == [
        dict(
            item=image,
            changed=False,
            dest="/var/lib/images/a.qcow2",
            sha256=SHA,
            size=len(DATA),
            copied=False,
            checksum_cached=True,
            changes=[],
            settled=True,
        )
    ]


@pytest.mark.parametrize(
    "answers",
    [
        [],  # not asked (no placement)
        [answer("/var/lib/a.qcow2", settled=False, sha256=None)],
        [answer("/var/lib/a.qcow2", sha256="f" * 64)],  # the host holds other content: kvm_image refuses
        [answer("/var/lib/other.qcow2")],
        [dict(answer("/var/lib/a.qcow2"), settled="yes")],  # only a real true counts
    ],
)
def test_anything_but_a_settled_answer_for_that_content_sends_the_image(src, answers):
    image = dict(src=src, dest="/var/lib/a.qcow2")
    assert fleet_images_split([image], answers) == dict(send=[image], settled=[])


def test_the_src_changed_since_the_host_was_asked_sends_it(src, tmp_path):
    image = dict(src=src, dest="/var/lib/a.qcow2")
    asked = fleet_image_probes([image])[0]
    with open(src, "ab") as f:
        f.write(b" changed")
    assert fleet_images_split([image], [answer(asked["dest"], sha256=asked["sha256"])])["send"] == [image]


def test_order_is_kept_in_both_lists(src):
    images = [dict(src=src, dest=f"/var/lib/{n}.qcow2") for n in "abcd"]
    split = fleet_images_split(images, [answer("/var/lib/b.qcow2"), answer("/var/lib/d.qcow2")])
    assert [i["dest"] for i in split["send"]] == ["/var/lib/a.qcow2", "/var/lib/c.qcow2"]
    assert [i["dest"] for i in split["settled"]] == ["/var/lib/b.qcow2", "/var/lib/d.qcow2"]


@pytest.mark.parametrize(
    "images, probed, message",
    [
        ("x", [], "the base images must be a list, got a string"),
        (["x"], [], r"the base images\[0\] must be a dict"),
        ([dict(dest="/a")], [], r"the base images\[0\] needs a non-empty string 'src', got null"),
        ([dict(src="/a", dest="")], [], r"needs a non-empty string 'dest', got an empty string"),
        ([], None, "the probed images must be a list, got null"),
        ([], ["x"], r"the probed images\[0\] must be a dict \(as kvm_host_info returns it\)"),
    ],
)
def test_bad_input_says_what_to_fix(images, probed, message):
    with pytest.raises(AnsibleFilterError, match=message):
        fleet_images_split(images, probed)
    if probed == []:
        with pytest.raises(AnsibleFilterError, match=message.replace("fleet_images_split", "fleet_image_probes")):
            fleet_image_probes(images)
