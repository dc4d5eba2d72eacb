"""Tests for L{contivd.ipam}: addresses and tags without a master."""

import json
import sys

from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from contivd import ipam, model
from contivd.errors import Conflict, ValidationError
from contivd.harness import Harness, skip_reason
from contivd.store.etcd import EtcdStore
from contivd.store.memory import MemoryStore


class AddressTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.net = model.Network.build("web", "10.1.1.0/29",
                                       gateway="10.1.1.1")

    def alloc(self, ep, requested=None):
        return self.successResultOf(
            ipam.allocate_address(self.store, self.net, ep, requested))

    def test_lowest_free_and_key(self):
        """Addresses are given lowest first, one key each holding the id."""
        self.assertEqual([self.alloc("a"), self.alloc("b")],
                         ["10.1.1.2", "10.1.1.3"])
        node = self.successResultOf(self.store.get(
            "/contiv.io/alloc/ip/web.default/10.1.1.3"))
        self.assertEqual(node.value, "b")

    def test_exhausted(self):
        """Network, broadcast and gateway are never given; then it says so."""
        got = [self.alloc(f"ep{i}") for i in range(5)]
        self.assertEqual(got, [f"10.1.1.{i}" for i in range(2, 7)])
        f = self.failureResultOf(
            ipam.allocate_address(self.store, self.net, "x"),
            ipam.PoolExhausted)
        self.assertIn("no free address", str(f.value))

    def test_requested(self):
        """A requested address is given, again to its holder, not others."""
        self.assertEqual(self.alloc("a", "10.1.1.5"), "10.1.1.5")
        self.assertEqual(self.alloc("a", "10.1.1.5"), "10.1.1.5")
        f = self.failureResultOf(ipam.allocate_address(
            self.store, self.net, "b", "10.1.1.5"), ipam.AddressTaken)
        self.assertIn("held by endpoint a", str(f.value))
        for bad in ("10.1.1.1", "10.1.1.7", "10.1.2.2", "nope"):
            self.failureResultOf(ipam.allocate_address(
                self.store, self.net, "b", bad), ValidationError)
        self.assertEqual(self.alloc("b"), "10.1.1.2")

    def test_release_only_by_holder(self):
        """A release frees an address only while it holds that endpoint."""
        ip = self.alloc("a")
        self.assertFalse(self.successResultOf(ipam.release_address(
            self.store, self.net.id, ip, "b")))
        self.assertTrue(self.successResultOf(ipam.release_address(
            self.store, self.net.id, ip, "a")))
        self.assertEqual(self.alloc("c"), ip)
        self.assertEqual(self.successResultOf(ipam.allocated_addresses(
            self.store, self.net.id)), {ip: "c"})


class TagTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()

    def tag(self, owner, ranges=((1, 3),), requested=None):
        return self.successResultOf(ipam.allocate_tag(
            self.store, ipam.VXLAN_POOL, owner, ranges, requested))

    def test_allocate_release(self):
        """Tags are given lowest first, refused when taken, reused after."""
        self.assertEqual([self.tag("a"), self.tag("b")], [1, 2])
        self.assertEqual(self.tag("c", requested=7), 7)
        self.failureResultOf(ipam.allocate_tag(
            self.store, ipam.VXLAN_POOL, "d", ((1, 3),), 2), Conflict)
        self.assertEqual(self.tag("d"), 3)
        self.failureResultOf(ipam.allocate_tag(
            self.store, ipam.VXLAN_POOL, "e", ((1, 3),)), ipam.PoolExhausted)
        self.assertFalse(self.successResultOf(ipam.release_tag(
            self.store, ipam.VXLAN_POOL, 2, "a")))
        self.assertTrue(self.successResultOf(ipam.release_tag(
            self.store, ipam.VXLAN_POOL, 2, "b")))
        self.assertEqual(self.tag("e"), 2)
        self.assertEqual(self.successResultOf(ipam.tags_in_use(
            self.store, ipam.VXLAN_POOL)),
            {1: "a", 2: "e", 3: "d", 7: "c"})

    def test_swap_retries_on_race(self):
        """A tag map changed between read and swap is read again."""
        self.tag("a")
        real_swap = self.store.swap

        def racing_swap(key, value, prev, ttl=None):
            self.store.swap = real_swap
            self.successResultOf(real_swap(key, json.dumps(
                {"1": "a", "2": "rival"}), prev))
            return real_swap(key, value, prev, ttl)

        self.store.swap = racing_swap
        self.assertEqual(self.tag("b"), 3)


_ALLOCATOR = """
import json, sys
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from contivd import ipam, model
from contivd.store.etcd import EtcdStore

async def main(reactor, url, who):
    store = EtcdStore([url], reactor)
    while True:
        try:
            await store.get("/go")
            break
        except Exception:
            await deferLater(reactor, 0.01, lambda: None)
    net = model.Network.from_json(
        (await store.get(model.network_key("pool"))).value)
    got = []
    while True:
        try:
            got.append(await ipam.allocate_address(
                store, net, f"{who}-{len(got)}"))
        except ipam.PoolExhausted:
            break
    print(json.dumps(got))
    await store.close()

react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
"""


class ConcurrentEtcdTests(TestCase):
    """Two processes allocating from one network of a real etcd."""

    skip = skip_reason("etcd")
    timeout = 120

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.etcd = self.harness.etcd()
        self.store = EtcdStore([self.etcd.url], reactor)
        self.addCleanup(self.store.close)

    async def test_two_processes_share_a_24(self):
        """
        Two processes taking every address of a /24 at once get each
        address once, lose none, and the pool is then exhausted.
        """
        net = model.Network.build("pool", "10.20.0.0/24")
        await self.store.put(net.key, net.to_json())
        runs = [getProcessOutputAndValue(
            sys.executable, ["-c", _ALLOCATOR, self.etcd.url, who],
            env=None, reactor=reactor) for who in ("p1", "p2")]
        await self.store.put("/go", "1")
        results = await DeferredList(runs, fireOnOneErrback=True)
        got = {}
        for (_, (out, err, code)), who in zip(results, ("p1", "p2"),
                                              strict=True):
            self.assertEqual(code, 0, err.decode())
            got[who] = json.loads(out.decode().strip().splitlines()[-1])
        every = got["p1"] + got["p2"]
        self.assertEqual(len(every), 253)
        self.assertEqual(set(every), set(net.usable()))
        self.assertTrue(got["p1"] and got["p2"])
        held = await ipam.allocated_addresses(self.store, net.id)
        for who, ips in got.items():
            for i, ip in enumerate(ips):
                self.assertEqual(held[ip], f"{who}-{i}")
        try:
            await ipam.allocate_address(self.store, net, "late")
        except ipam.PoolExhausted as e:
            self.assertIn("all 253", str(e))
        else:
            self.fail("the pool should be exhausted")
