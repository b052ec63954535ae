"""The gateway's certificate schedule, sans-I/O (mesh/node/certs.py): when to renew, how
failures back off, which names may have a certificate at all."""

from __future__ import annotations

from pathlib import Path

from mesh.node.certs import Backoff, CertManager, renew_at


def test_renewal_is_at_two_thirds_of_the_lifetime() -> None:
    assert renew_at(0, 90 * 86400) == 60 * 86400
    assert renew_at(1000, 4000, fraction=0.5) == 2500


def test_failures_back_off_per_name_up_to_an_hour() -> None:
    backoff = Backoff()
    delays = [backoff.failed("a.example", now=0.0) for _ in range(10)]
    assert delays[:4] == [30.0, 60.0, 120.0, 240.0] and delays[-1] == 3600.0
    assert not backoff.may_try("a.example", now=3599.0) and backoff.may_try("b.example", 0)
    assert backoff.may_try("a.example", now=3600.0)
    backoff.succeeded("a.example")
    assert backoff.may_try("a.example", now=0.0) and backoff.failed("a.example", 0.0) == 30.0


def test_only_the_domain_and_one_label_under_it_are_wanted(tmp_path: Path) -> None:
    async def never(name: str) -> bool:
        return False

    certs = CertManager("hooks.example", "ops@hooks.example", "https://acme.invalid/dir",
                        tmp_path / "certs", never)
    assert certs.wanted("hooks.example") and certs.wanted("web.hooks.example")
    for name in ("a.b.hooks.example", "evilhooks.example", "example", "-x.hooks.example",
                 "x_y.hooks.example", "hooks.example.evil"):
        assert not certs.wanted(name), name
    assert (tmp_path / "certs").stat().st_mode & 0o077 == 0
    assert (tmp_path / "certs" / "fallback.key").stat().st_mode & 0o077 == 0
