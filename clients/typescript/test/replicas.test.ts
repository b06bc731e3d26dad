// Several nachbar-db replicas behind one DBClient: calls spread round-robin, and the client keeps
// working when one replica stops (idempotent calls are retried on UNAVAILABLE).

import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DBClient, InvalidArgumentError, channelTarget } from '../src/index';
import { ServerProcess, startServer, tempDir } from './servers';

const CALLS = 30;

/** Which replicas answered: each holds one store named after it (set up below). */
async function replicasSeen(db: DBClient): Promise<Set<string>> {
  const seen = new Set<string>();
  for (let n = 0; n < CALLS; n++) {
    seen.add((await db.listStores()).map((store) => store.name).join(','));
  }
  return seen;
}

describe('DBClient over replicas', () => {
  let tmp: ReturnType<typeof tempDir>;
  const servers: ServerProcess[] = [];

  before(async () => {
    tmp = tempDir('nachbar-ts-replicas-');
    for (const name of ['a', 'b']) {
      const server = await startServer('nachbar-db', ['--data-dir', path.join(tmp.dir, name)], tmp.dir);
      servers.push(server);
      const direct = new DBClient(server.address);
      try {
        await direct.createStore(name, 2);
      } finally {
        direct.close();
      }
    }
  });

  after(async () => {
    for (const server of servers) await server.stop();
    tmp?.remove();
  });

  it('builds balanced targets from lists and dns names', () => {
    assert.deepEqual(channelTarget('127.0.0.1:1,localhost:2'), { target: 'ipv4:127.0.0.1:1,127.0.0.1:2', balance: true });
    assert.deepEqual(channelTarget(['[::1]:1', '::1:2']), { target: 'ipv6:[::1]:1,[::1]:2', balance: true });
    assert.deepEqual(channelTarget('dns:///nachbar-db:1369'), { target: 'dns:///nachbar-db:1369', balance: true });
    assert.deepEqual(channelTarget('db:1369'), { target: 'db:1369', balance: false });
    assert.throws(() => channelTarget('db1:1369,db2:1369'), InvalidArgumentError);
    assert.throws(() => channelTarget('127.0.0.1:1,[::1]:2'), /mix IPv4 and IPv6/);
  });

  it('spreads calls over every replica and survives one stopping', async () => {
    const [first, second] = servers as [ServerProcess, ServerProcess];
    const db = new DBClient([first.address, second.address], { timeoutMs: 20_000 });
    try {
      assert.deepEqual([...(await replicasSeen(db))].sort(), ['a', 'b']);
      first.child.kill('SIGKILL');
      for (let n = 0; n < CALLS; n++) {
        await db.ping();
        assert.deepEqual((await db.listStores()).map((store) => store.name), ['b']);
      }
      assert.deepEqual([...(await replicasSeen(db))], ['b']);
    } finally {
      db.close();
    }
  });
});
