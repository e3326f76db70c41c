"""The cloud store refusing writes for a while (another process holds SQLite's write lock
past the busy timeout): what nodes send is not acknowledged, their connections stay up,
and it goes through once the store takes writes again."""

from __future__ import annotations

import sqlite3

from tests.support import Env, edit_yaml, join, make_cloud, wait_for


def test_a_locked_store_delays_a_registration_and_drops_no_connection(env: Env) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "patient")
    edit_yaml(edge.config, lambda d: d["modules"]["edgeHub"]["websocket"].update(
        handshakeTimeout="3s"))  # how long the node waits for the registration's answer
    assert cloud.daemon is not None

    holder = sqlite3.connect(cloud.dir / "cloudcore.db", timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        edge.start()  # its Node must be created: that fails while the lock is held
        assert edge.daemon is not None
        cloud.daemon.wait_log("patient: default/node/patient could not be stored; the node "
                              "will send it again", 30)
        edge.daemon.wait_log("the cloud did not acknowledge the node registration; trying "
                             "again", 30)
        assert cloud.node_ready("patient") is None  # not stored
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    # The registration goes through on the same connection.
    wait_for(lambda: cloud.node_ready("patient") is True, 30,
             what="the registration written after the lock was released")
    assert edge.log().count("connected to 127.0.0.1") == 1
    assert "connection to the cloud lost" not in edge.log()
    assert cloud.daemon.running and edge.daemon.running
