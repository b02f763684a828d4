"""Every chain a fog anchors to: the dispatch chain and the registry chains.

The dispatch chain (`chain_url`) gets anchors, execution reports and faults through the
outbox `chain.db`, and sends the instructions this fog carries out. Each registry chain
(`registry_chains`: the green-certificate chain, the carbon chain, separate instances of the
same chain service) gets the same log anchored, so it sees the generators' energy
statements, through an outbox of its own, `chain-registry-HOST-PORT.db`
(fog_node.config.registry_outbox), and sends no instructions.

Every link is a ChainLink with its own view of its chain: the nonce and last anchored
checkpoint it learnt at its first contact, the anchors queued since, each carrying the
aggregates and statements its checkpoints cover beyond that chain's last anchor. The links
share only the node (its log, checkpoints and cooked index, read under node.lock for the
moment an anchor is built): each runs on a thread of its own, so a chain that is down or
slow to answer delays its own anchors only, which wait in its outbox and land, in order,
when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fog_node.chainlink.link import ChainLink
from fog_node.config import registry_outbox
from fog_node.node import FogNode
from meterledger import wire as P
from meterledger.clients.chain import ChainClient

log = logging.getLogger("fog_node.chainlink.links")
LAST_ROUND_S = 30.0  # at a stop, how long the last rounds may take, all links together


class ChainLinks:
    """The dispatch chain's link (`main`, None without chain_url) and the registry chains'
    (`registry`, in the order configured), run and stopped together."""

    def __init__(self, main: ChainLink | None, registry: Sequence[ChainLink] = ()) -> None:
        self.main = main
        self.registry = list(registry)
        self._busy: set[ChainLink] = set()  # still in their last round when stop() gave up

    @classmethod
    def configured(cls, node: FogNode, clock: Callable[[], float]) -> ChainLinks:
        """The links node.config asks for: chain_url's with instructions (signed by
        dispatch_pub when pinned), one per registry chain without; chain_ca_file verifies
        every https chain."""
        c = node.config
        ca = c.chain_ca_file or None
        made: list[ChainLink] = []
        try:
            main = None
            if c.chain_url:
                pin = P.PublicKey(bytes.fromhex(c.dispatch_pub)) if c.dispatch_pub else None
                main = ChainLink(node, ChainClient(c.chain_url, ca_file=ca), clock,
                                 c.anchor_period_s, pin)
                made.append(main)
            for url in c.registry_chains:
                made.append(ChainLink(node, ChainClient(url, ca_file=ca), clock,
                                      c.anchor_period_s, outbox=registry_outbox(url),
                                      instructions=False, label=f"registry chain {url}"))
        except BaseException:
            for link in made:
                link.close()
            raise
        registry = made[1:] if main is not None else made
        for link in registry:
            log.info("anchoring to %s too, outbox %s", link.label, link.db_path.name)
        return cls(main, registry)

    @property
    def links(self) -> list[ChainLink]:
        return ([self.main] if self.main is not None else []) + self.registry

    def start(self, poll_s: float) -> None:
        """Each link on its own thread, polling every poll_s seconds."""
        for link in self.links:
            link.start(poll_s)

    def stop(self, last_round_s: float = LAST_ROUND_S) -> None:
        """Stop every thread, then one last round of each link at once (anchoring what the
        final seal added, where the chain answers), waiting at most last_round_s for them
        all: a link still in its round then is left to finish (and not closed); its
        outbox resumes at the next start."""
        for link in self.links:
            link.signal_stop()
        for link in self.links:
            link.stop()
        threads = [(link, threading.Thread(target=self._last_round, args=(link,), daemon=True,
                                           name=f"chain-last-{link.db_path.stem}"))
                   for link in self.links]
        for _, t in threads:
            t.start()
        deadline = time.monotonic() + last_round_s
        for link, t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self._busy.add(link)
                log.warning("the last round with the %s did not end within %.0f s; its "
                            "outbox resumes at the next start", link.label, last_round_s)

    @staticmethod
    def _last_round(link: ChainLink) -> None:
        try:
            link.step()
        except Exception:  # logged like a round of the link's own thread
            log.exception("last chain link step failed (%s)", link.label)

    def close(self) -> None:
        for link in self.links:
            if link not in self._busy:
                link.close()

    def statuses(self) -> list[dict[str, Any]]:
        """The registry links' states (ChainLink.status, with the chain's URL), in order."""
        return [{"url": link.client.base_url, **link.status()} for link in self.registry]
