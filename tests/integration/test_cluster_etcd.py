"""The etcd client against a real 3-member etcd cluster on loopback."""

from __future__ import annotations

import asyncio

import pytest

from baton.cluster.etcd import Compare, Etcd, get_op, put_op
from baton.errors import EtcdUnavailable
from tests.support.etcd import EtcdCluster


async def test_put_get_prefix_delete_round_trip(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await etcd.put("/t/a", "1")
        await etcd.put("/t/b", b"\xff\x00binary")
        await etcd.put("/u/c", "other prefix")
        a = await etcd.get("/t/a")
        assert a is not None and a.value == b"1" and a.version == 1
        kvs, revision = await etcd.get_prefix("/t/")
        assert [kv.key for kv in kvs] == ["/t/a", "/t/b"]
        assert kvs[1].value == b"\xff\x00binary"
        assert revision >= kvs[1].mod_revision
        assert await etcd.delete("/t/", prefix=True) == 2
        assert await etcd.get("/t/a") is None
        assert (await etcd.get("/u/c")) is not None


async def test_txn_creates_a_key_only_once(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        first = await etcd.txn(
            [Compare.absent("/lock")], [put_op("/lock", "me")], [get_op("/lock")]
        )
        second = await etcd.txn(
            [Compare.absent("/lock")], [put_op("/lock", "you")], [get_op("/lock")]
        )
        assert first.succeeded and not second.succeeded
        assert second.ranges()[0][0].value == b"me"


async def test_a_key_under_a_revoked_lease_is_gone(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        lease = await etcd.grant(30)
        await etcd.put("/leased", "x", lease=lease)
        assert await etcd.keepalive(lease) == 30
        await etcd.revoke(lease)
        assert await etcd.get("/leased") is None
        assert await etcd.keepalive(lease) == 0
        await etcd.revoke(lease)  # twice is no error


async def test_watch_sees_puts_and_deletes_in_order(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        _, revision = await etcd.get_prefix("/w/")
        seen: list[tuple[str, str]] = []

        async def watch() -> None:
            async for _, events in etcd.watch("/w/", revision + 1):
                seen.extend((e.kind, e.kv.key) for e in events)
                if len(seen) >= 3:
                    return

        task = asyncio.create_task(watch())
        await etcd.put("/w/a", "1")
        await etcd.put("/w/b", "2")
        await etcd.delete("/w/a")
        await etcd.put("/other", "not watched")
        await asyncio.wait_for(task, 10)
        assert seen == [("put", "/w/a"), ("put", "/w/b"), ("delete", "/w/a")]


async def test_client_keeps_working_when_one_member_is_killed(
    etcd_cluster: EtcdCluster,
) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await etcd.put("/k", "before")
        etcd_cluster.kill(0)  # the endpoint the client tries first
        await etcd.put("/k", "after")
        kv = await etcd.get("/k")
        assert kv is not None and kv.value == b"after"
        etcd_cluster.kill(1)  # no quorum left: a clear error, not a hang
        async with Etcd(etcd_cluster.endpoints, timeout=2.0) as short:
            with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered"):
                await short.put("/k", "no quorum")


async def test_unreachable_endpoints_give_a_clear_error() -> None:
    from tests.support.procs import free_port

    endpoints = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    async with Etcd(endpoints) as etcd:
        with pytest.raises(EtcdUnavailable) as caught:
            await etcd.get("/x")
    assert endpoints[0] in str(caught.value) and endpoints[1] in str(caught.value)


async def test_large_answers_and_events_are_read_whole(etcd_cluster: EtcdCluster) -> None:
    big = b"x" * 300_000  # beyond aiohttp's line limit, once base64-encoded in JSON
    async with Etcd(etcd_cluster.endpoints) as etcd:
        _, revision = await etcd.get_prefix("/big/")
        for i in range(3):
            await etcd.put(f"/big/{i}", big)
        kvs, _ = await etcd.get_prefix("/big/")
        assert [kv.value for kv in kvs] == [big] * 3
        async for _, events in etcd.watch("/big/", revision + 1):
            assert events[0].kv.value == big
            break
