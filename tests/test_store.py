"""
The store suite: one set of tests of L{contivd.store} semantics, run
against the in-memory store and against a real etcd.
"""

import atexit
import itertools
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from contivd.harness import Harness, skip_reason, wait_until
from contivd.store import (
    CREATE,
    DELETE,
    EXPIRE,
    UPDATE,
    CompareFailed,
    KeyExists,
    KeyMissing,
    StoreUnavailable,
)
from contivd.store.etcd import EtcdStore
from contivd.store.memory import MemoryStore

ETCD_SKIP = skip_reason("etcd")
_shared: dict = {}
_roots = itertools.count()


def shared_etcd():
    """One private etcd for every test in this run, stopped at exit."""
    if "etcd" not in _shared:
        harness = Harness()
        atexit.register(harness.close)
        _shared["etcd"] = harness.etcd()
    return _shared["etcd"]


class StoreTests:
    """The behaviour every store must have; mixed into a TestCase."""

    def setUp(self):
        self.root = f"/suite{next(_roots)}"
        self.store = self.make_store()

    def k(self, *names):
        return "/".join((self.root,) + names)

    async def expect(self, d, error):
        try:
            await d
        except error as e:
            return e
        self.fail(f"expected {error.__name__}")

    async def eventually(self, check):
        for _ in range(200):
            if check():
                return
            await self.pause()
        self.assertTrue(check())

    async def test_get_missing(self):
        """Reading an absent key fails with KeyMissing."""
        await self.expect(self.store.get(self.k("nope")), KeyMissing)

    async def test_put_get(self):
        """A put value reads back, and each write raises the index."""
        first = await self.store.put(self.k("a"), "1")
        second = await self.store.put(self.k("a"), "2")
        node = await self.store.get(self.k("a"))
        self.assertEqual((node.key, node.value), (self.k("a"), "2"))
        self.assertGreater(second.modified_index, first.modified_index)
        self.assertEqual(node.modified_index, second.modified_index)
        self.assertIsNone(node.ttl)

    async def test_create_if_absent(self):
        """Create writes an absent key and refuses an existing one."""
        await self.store.create(self.k("c"), "mine")
        await self.expect(self.store.create(self.k("c"), "theirs"),
                          KeyExists)
        self.assertEqual((await self.store.get(self.k("c"))).value, "mine")

    async def test_swap(self):
        """Swap writes only over the expected value."""
        await self.store.put(self.k("s"), "old")
        await self.expect(self.store.swap(self.k("s"), "x", "wrong"),
                          CompareFailed)
        self.assertEqual((await self.store.get(self.k("s"))).value, "old")
        await self.store.swap(self.k("s"), "new", "old")
        self.assertEqual((await self.store.get(self.k("s"))).value, "new")
        await self.expect(self.store.swap(self.k("none"), "x", "y"),
                          KeyMissing)

    async def test_compare_delete(self):
        """Compare-and-delete removes a key only while it holds the value."""
        await self.store.put(self.k("d"), "ep1")
        await self.expect(self.store.compare_delete(self.k("d"), "ep2"),
                          CompareFailed)
        await self.store.get(self.k("d"))
        await self.store.compare_delete(self.k("d"), "ep1")
        await self.expect(self.store.get(self.k("d")), KeyMissing)
        await self.expect(self.store.compare_delete(self.k("d"), "ep1"),
                          KeyMissing)

    async def test_delete(self):
        """Delete gives the old value and refuses an absent key."""
        await self.store.put(self.k("x"), "v")
        self.assertEqual((await self.store.delete(self.k("x"))).value, "v")
        await self.expect(self.store.delete(self.k("x")), KeyMissing)

    async def test_list(self):
        """A listing holds every key below the prefix, at any depth."""
        await self.store.put(self.k("p", "a"), "1")
        last = await self.store.put(self.k("p", "b", "c"), "2")
        await self.store.put(self.k("pq"), "not below p")
        listing = await self.store.list(self.k("p"))
        self.assertEqual(listing.values(), {self.k("p", "a"): "1",
                                            self.k("p", "b", "c"): "2"})
        self.assertGreaterEqual(listing.index, last.modified_index)

    async def test_list_missing(self):
        """A prefix with nothing below it lists empty, with an index."""
        last = await self.store.put(self.k("other"), "1")
        listing = await self.store.list(self.k("empty"))
        self.assertEqual(listing.nodes, ())
        self.assertGreaterEqual(listing.index, last.modified_index)

    async def test_ttl_expires(self):
        """A key written with a TTL is gone after it, with an expire event."""
        listing = await self.store.list(self.k("t"))
        events = []
        watcher = self.store.watch(self.k("t"), events.append, listing)
        self.addCleanup(watcher.stop)
        node = await self.store.put(self.k("t", "k"), "v", ttl=1)
        self.assertIn(node.ttl, (0, 1))
        self.assertIsNotNone(node.expiration)
        await self.advance(3)
        await self.eventually(lambda: len(events) == 2)
        self.assertEqual([e.action for e in events], [CREATE, EXPIRE])
        self.assertEqual(events[1].prev_value, "v")
        self.assertIsNone(events[1].value)
        await self.expect(self.store.get(self.k("t", "k")), KeyMissing)

    async def test_put_refreshes_ttl(self):
        """Writing a key again with a TTL restarts its time to live."""
        await self.store.put(self.k("r"), "v", ttl=2)
        await self.advance(1.2)
        await self.store.put(self.k("r"), "v", ttl=2)
        await self.advance(1.2)
        self.assertEqual((await self.store.get(self.k("r"))).value, "v")

    async def test_watch_sees_changes_in_order(self):
        """A watch delivers create, update and delete under its prefix."""
        listing = await self.store.list(self.k("w"))
        events = []
        watcher = self.store.watch(self.k("w"), events.append, listing)
        self.addCleanup(watcher.stop)
        await self.store.put(self.k("w", "a"), "1")
        await self.store.put(self.k("elsewhere"), "x")
        await self.store.swap(self.k("w", "a"), "2", "1")
        await self.store.delete(self.k("w", "a"))
        await self.eventually(lambda: len(events) == 3)
        self.assertEqual(
            [(e.action, e.key, e.value, e.prev_value) for e in events],
            [(CREATE, self.k("w", "a"), "1", None),
             (UPDATE, self.k("w", "a"), "2", "1"),
             (DELETE, self.k("w", "a"), None, "2")])
        self.assertEqual(sorted(e.index for e in events),
                         [e.index for e in events])

    async def test_watch_from_listing_misses_nothing(self):
        """Writes made between a listing and its watch are delivered."""
        await self.store.put(self.k("m", "old"), "0")
        listing = await self.store.list(self.k("m"))
        await self.store.put(self.k("m", "between"), "1")
        events = []
        watcher = self.store.watch(self.k("m"), events.append, listing)
        self.addCleanup(watcher.stop)
        await self.eventually(lambda: len(events) == 1)
        self.assertEqual((events[0].action, events[0].key),
                         (CREATE, self.k("m", "between")))

    async def test_watch_stop(self):
        """A stopped watch delivers nothing more."""
        listing = await self.store.list(self.k("st"))
        events = []
        watcher = self.store.watch(self.k("st"), events.append, listing)
        await self.store.put(self.k("st", "a"), "1")
        await self.eventually(lambda: len(events) == 1)
        watcher.stop()
        await self.store.put(self.k("st", "b"), "2")
        for _ in range(5):
            await self.pause()
        self.assertEqual(len(events), 1)

    async def test_watch_handler_error_does_not_stop_it(self):
        """A handler that raises is logged and the watch goes on."""
        listing = await self.store.list(self.k("h"))
        events = []

        def handler(event):
            events.append(event)
            if len(events) == 1:
                raise RuntimeError("handler bug")

        watcher = self.store.watch(self.k("h"), handler, listing)
        self.addCleanup(watcher.stop)
        await self.store.put(self.k("h", "a"), "1")
        await self.store.put(self.k("h", "b"), "2")
        await self.eventually(lambda: len(events) == 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_watch_index_too_old_rereads(self):
        """
        When the watched index has left the history, the watch re-reads
        the prefix and reports the difference as events.
        """
        await self.store.put(self.k("o", "kept"), "1")
        await self.store.put(self.k("o", "changed"), "1")
        await self.store.put(self.k("o", "removed"), "1")
        listing = await self.store.list(self.k("o"))
        await self.store.put(self.k("o", "changed"), "2")
        await self.store.delete(self.k("o", "removed"))
        await self.store.put(self.k("o", "added"), "1")
        await self.flood(self.k("noise"), 1100)
        events = []
        watcher = self.store.watch(self.k("o"), events.append, listing)
        self.addCleanup(watcher.stop)
        await self.eventually(lambda: len(events) == 3)
        self.assertEqual(
            sorted((e.action, e.key, e.value) for e in events),
            [(CREATE, self.k("o", "added"), "1"),
             (DELETE, self.k("o", "removed"), None),
             (UPDATE, self.k("o", "changed"), "2")])
        await self.store.put(self.k("o", "later"), "1")
        await self.eventually(lambda: len(events) == 4)
        self.assertEqual(events[3].key, self.k("o", "later"))

    async def flood(self, key, count):
        for i in range(count):
            await self.store.put(key, str(i))


class MemoryStoreTests(StoreTests, TestCase):
    """The store suite on L{MemoryStore}."""

    def make_store(self):
        self.clock = Clock()
        return MemoryStore(self.clock)

    async def advance(self, seconds):
        self.clock.advance(seconds)

    async def pause(self):
        self.clock.advance(0)

    async def test_unavailable_calls_wait(self):
        """While unavailable, calls wait and then run in order."""
        self.store.set_available(False)
        put = self.store.put(self.k("u"), "1")
        get = self.store.get(self.k("u"))
        self.assertNoResult(get)
        self.store.set_available(True)
        self.assertEqual((await put).value, "1")
        self.assertEqual((await get).value, "1")

    async def test_watch_waits_for_handler(self):
        """An event waits until the handler's Deferred of the last fires."""
        listing = await self.store.list(self.k("b"))
        events, gate = [], Deferred()

        def handler(event):
            events.append(event)
            return gate if len(events) == 1 else None

        watcher = self.store.watch(self.k("b"), handler, listing)
        self.addCleanup(watcher.stop)
        await self.store.put(self.k("b", "1"), "x")
        await self.store.put(self.k("b", "2"), "x")
        self.assertEqual(len(events), 1)
        gate.callback(None)
        self.assertEqual(len(events), 2)

    async def test_watch_reissues_long_poll(self):
        """A long poll that times out is re-issued from the same index."""
        listing = await self.store.list(self.k("l"))
        events = []
        watcher = self.store.watch(self.k("l"), events.append, listing)
        self.addCleanup(watcher.stop)
        self.clock.advance(self.store.poll_timeout * 3)
        await self.store.put(self.k("l", "a"), "1")
        self.assertEqual([e.key for e in events], [self.k("l", "a")])


class EtcdStoreTests(StoreTests, TestCase):
    """The store suite on L{EtcdStore} and a real etcd."""

    skip = ETCD_SKIP
    timeout = 60

    def make_store(self):
        self.etcd = shared_etcd()
        store = EtcdStore([self.etcd.url], reactor, timeout=5)
        store.poll_timeout = 1.0
        self.addCleanup(store.close)
        return store

    async def advance(self, seconds):
        await deferLater(reactor, seconds, lambda: None)

    async def pause(self):
        await deferLater(reactor, 0.05, lambda: None)

    async def flood(self, key, count):
        for start in range(0, count, 50):
            await _gather([self.store.put(key, str(i))
                           for i in range(start, min(count, start + 50))])

    async def test_plain_read_sees_writes(self):
        """A put is visible to a plain v2 read of etcd."""
        await self.store.put(self.k("plain"), '{"a": 1}')
        node = await deferToThread(self.etcd.get, self.k("plain"))
        self.assertEqual(node["value"], '{"a": 1}')


async def _gather(ds):
    for d in ds:
        await d


class EtcdOutageTests(TestCase):
    """An etcd of its own that the tests stop and start."""

    skip = ETCD_SKIP
    timeout = 90

    def setUp(self):
        self.harness = Harness()
        self.addCleanup(self.harness.close)
        self.etcd = self.harness.etcd()

    def store(self, **kw):
        store = EtcdStore([self.etcd.url], reactor, timeout=2, **kw)
        store.poll_timeout = 1.0
        self.addCleanup(store.close)
        return store

    async def test_call_retries_through_outage(self):
        """A call made while etcd is down completes once it is back."""
        store = self.store()
        await store.put("/o/a", "1")
        await deferToThread(self.etcd.kill)
        d = store.get("/o/a")
        await deferLater(reactor, 1.0, lambda: None)
        self.assertNoResult(d)
        await deferToThread(self.etcd.start)
        self.assertEqual((await d).value, "1")

    async def test_gives_up_when_told(self):
        """A store built to give up fails with a message naming etcd."""
        store = self.store(give_up_after=1.0)
        await deferToThread(self.etcd.kill)
        try:
            await store.get("/o/a")
        except StoreUnavailable as e:
            self.assertIn(self.etcd.url, str(e))
        else:
            self.fail("expected StoreUnavailable")

    async def test_watch_survives_restart(self):
        """A watch goes on after etcd restarts, from where it was."""
        store = self.store()
        listing = await store.list("/w")
        events = []
        watcher = store.watch("/w", events.append, listing)
        self.addCleanup(watcher.stop)
        await store.put("/w/a", "1")
        await deferToThread(self.etcd.kill)
        await deferLater(reactor, 1.5, lambda: None)
        await deferToThread(self.etcd.start)
        await store.put("/w/b", "2")
        for _ in range(200):
            if len(events) == 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.flushLoggedErrors()
        self.assertEqual([e.key for e in events], ["/w/a", "/w/b"])

    async def test_second_url_used_when_first_is_down(self):
        """With two URLs, calls go through the one that answers."""
        store = EtcdStore(["http://127.0.0.1:1", self.etcd.url], reactor,
                          timeout=2)
        self.addCleanup(store.close)
        await store.put("/two", "1")
        self.assertEqual((await store.get("/two")).value, "1")


class ProcessExitTests(SynchronousTestCase):
    """An EtcdStore never closed does not keep its process alive."""

    def test_exit_without_close(self):
        """
        A process that made an EtcdStore (its pools started, a long poll
        possibly parked) and never closed it still exits at once.
        """
        code = ("from twisted.internet import reactor\n"
                "from contivd.store.etcd import EtcdStore\n"
                "EtcdStore(['http://127.0.0.1:9'], reactor)\n")
        result = subprocess.run([sys.executable, "-c", code], timeout=30,
                                capture_output=True)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_made_before_a_fork(self):
        """
        A store made before the process forks (as twistd makes the
        service, then daemonizes) answers in the forked child.
        """
        reason = skip_reason("etcd")
        if reason:
            raise self.skipTest(reason)
        harness = Harness()
        self.addCleanup(harness.close)
        etcd = harness.etcd()
        out = harness.path("answer")
        code = (
            "import os, sys\n"
            "from twisted.internet import reactor\n"
            "from contivd.store.etcd import EtcdStore\n"
            "store = EtcdStore([sys.argv[1]], reactor)\n"
            "if os.fork():\n"
            "    os._exit(0)\n"
            "def done(result):\n"
            "    open(sys.argv[2], 'w').write(type(result).__name__)\n"
            "    reactor.stop()\n"
            "store.list('/').addBoth(done)\n"
            "reactor.callLater(20, reactor.stop)\n"
            "reactor.run()\n")
        subprocess.run([sys.executable, "-c", code, etcd.url, out],
                       timeout=30, check=True)
        wait_until("the forked child's answer",
                   lambda: open(out).read() == "Listing", 25)
