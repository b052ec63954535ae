import pytest

from signaling.policy import RelayPolicy

DENIED = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "0.1.2.3", "10.0.0.1", "172.16.5.4",
    "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.255.255", "169.254.169.254",
    "169.254.0.1", "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
    "192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1", "192.0.0.8", "192.88.99.1",
    "::", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "2001:db8::1", "fec0::1",
    # IPv4 in IPv6 disguise
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "::10.1.2.3", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:c0a8:0101::", "64:ff9b::127.0.0.1",
    "64:ff9b::10.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1",
    "not-an-ip", "", "1.2.3.4.5",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8",
           "2002:0808:0808::1"]


@pytest.mark.parametrize("addr", DENIED)
def test_denied_by_default(addr: str) -> None:
    assert not RelayPolicy().permitted(addr)


@pytest.mark.parametrize("addr", ALLOWED)
def test_public_allowed(addr: str) -> None:
    assert RelayPolicy().permitted(addr)


def test_relay_allow_opens_a_range_only() -> None:
    policy = RelayPolicy(["198.18.0.0/15"])
    assert policy.permitted("198.18.3.4")
    assert policy.permitted("::ffff:198.18.3.4")
    assert not policy.permitted("198.51.100.1")
    assert not policy.permitted("10.0.0.1")
