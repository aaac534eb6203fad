"""virtops.kvm.domain_name_of (plugins/filter/domain_name_of.py): the template's name from its XML."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.domain_name_of import FilterModule, domain_name_of


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"domain_name_of": domain_name_of}


TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- virsh dumpxml tpl -->
<domain type='kvm' xmlns:vt="https://virtops.example/kvm/1">
  <description>copy of <name>not-this</name></description>
  <metadata><vt:clone template="grand"><vt:name>nor-this</vt:name></vt:clone></metadata>
  <name>
    tpl
  </name>
  <devices/>
</domain>
"""


def test_name_of_reads_the_roots_own_name():
    assert domain_name_of(TEMPLATE) == "tpl"


def test_name_of_plain_and_bytes():
    assert domain_name_of("<domain><name>centos7</name></domain>") == "centos7"
    assert domain_name_of("<domain><name>été</name></domain>".encode()) == "été"


def test_name_of_name_after_other_elements():
    assert domain_name_of("<domain><uuid>u</uuid><title>T</title><name>n1</name></domain>") == "n1"


@pytest.mark.parametrize("text", [None, "", "  \n "])
def test_name_of_no_xml_is_empty(text):
    assert domain_name_of(text) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<domain><name>x</name>", "the input is not well-formed XML: "),
        ("name: x", "the input is not well-formed XML: "),
        ("<network><name>default</name></network>", r"the XML's root element is <network>, expected <domain>"),
        ("<domain type='kvm'><uuid>u</uuid></domain>", "the domain XML has no <name>"),
        ("<domain><name>  </name></domain>", "the domain XML has no <name>"),
        ("<domain><name/></domain>", "the domain XML has no <name>"),
        ("<domain><devices><name>x</name></devices></domain>", "the domain XML has no <name>"),
        (["<domain/>"], "the input must be domain XML text, got a list"),
        (42, "the input must be domain XML text, got a value of type int"),
    ],
)
def test_name_of_bad_input(text, message):
    with pytest.raises(AnsibleFilterError, match=f"^domain_name_of: {message}"):
        domain_name_of(text)
