// Reads against a nachbar-db that sends at most 4 MiB: what a read leaves out, and how it
// gets entries that do not fit into one response.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DBClient, NachbarError, ResourceExhaustedError } from '../src/index';
import { ServerProcess, startServer, tempDir } from './servers';

const MB = 1 << 20;
const IMAGE = '_nachbar_image';

describe('DBClient reads of large entries', () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: ServerProcess | undefined;
  let db: DBClient;

  before(async () => {
    tmp = tempDir('nachbar-ts-responses-');
    server = await startServer('nachbar-db', ['--data-dir', path.join(tmp.dir, 'data'), '--max-message-bytes', String(4 * MB)], tmp.dir);
    db = new DBClient(server.address, { timeoutMs: 20_000 });
    await db.createStore('big', 4);
    // Three entries of 1.5 MB: any two fit into 4 MiB, all three do not.
    for (let i = 0; i < 3; i++) {
      await db.upsert('big', [{ id: `e${i}`, vector: [1, i + 1, 0, 0], metadata: { caption: `photo ${i}`, [IMAGE]: randomBytes((3 * MB) / 2) } }]);
    }
  });

  after(async () => {
    db?.close();
    await server?.stop();
    tmp?.remove();
  });

  it('refuses a search that would not fit, saying what to ask for, and serves the narrower ones', async () => {
    const error = await db.getSimN('big', [1, 1, 0, 0], 3).then(
      () => assert.fail('the search succeeded'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof ResourceExhaustedError, `not RESOURCE_EXHAUSTED: ${String(error)}`);
    assert.match(error.message, /the 3 matches would make a 4\.5 MB response, over the 4\.0 MB limit/);
    assert.match(error.message, /k=2 fits/);
    assert.match(error.message, /exclude_metadata_keys=\['_nachbar_image', 'caption'\]/);

    const light = await db.getSimN('big', [1, 1, 0, 0], 3, { excludeMetadataKeys: [IMAGE] });
    assert.deepEqual(
      light.matches.map((m) => [m.metadata, m.omittedMetadataKeys]),
      [0, 1, 2].map((i) => [{ caption: `photo ${i}` }, [IMAGE]]),
    );
    const small = await db.getSimN('big', [1, 1, 0, 0], 3, { maxMetadataValueBytes: 1000 });
    assert.deepEqual(small.matches.map((m) => m.omittedMetadataKeys), [[IMAGE], [IMAGE], [IMAGE]]);
    const bare = await db.getSimN('big', [1, 1, 0, 0], 3, { includeMetadata: false });
    assert.deepEqual(bare.matches.map((m) => [m.metadata, m.omittedMetadataKeys]), [[{}, undefined], [{}, undefined], [{}, undefined]]);
  });

  it('gets every entry by id with as many responses as needed', async () => {
    const got = await db.getKey('big', ['e2', 'nope', 'e0', 'e1']);
    assert.deepEqual(got.entries.map((e) => e.id), ['e2', 'e0', 'e1']);
    assert.deepEqual(got.missingIds, ['nope']);
    assert.ok(got.entries.every((e) => (e.metadata[IMAGE] as Buffer).length === (3 * MB) / 2));
  });

  it('ends pages early instead of failing', async () => {
    const first = await db.getByPredicate('big', { limit: 100 });
    assert.deepEqual(first.entries.map((e) => e.id), ['e0', 'e1']);
    const rest = await db.getByPredicate('big', { limit: 100, pageToken: first.nextPageToken });
    assert.deepEqual(rest.entries.map((e) => e.id), ['e2']);
    assert.equal(rest.nextPageToken, '');
  });

  it('asks the server for no more than its own channel accepts', async () => {
    assert.ok(server);
    const narrow = new DBClient(server.address, { timeoutMs: 20_000, channelOptions: { 'grpc.max_receive_message_length': MB } });
    try {
      const error = await narrow.getKey('big', ['e0']).then(
        () => assert.fail('the read succeeded'),
        (e: unknown) => e,
      );
      assert.ok(error instanceof NachbarError && error.code === 'RESOURCE_EXHAUSTED', String(error));
      assert.match(error.message, /entry 'e0' alone does not fit/);
      assert.match(error.message, /over the 1\.0 MB limit \(the request's max_response_bytes\)/);
      const without = await narrow.getKey('big', ['e0', 'e1', 'e2'], { excludeMetadataKeys: [IMAGE] });
      assert.deepEqual(without.entries.map((e) => e.metadata), [0, 1, 2].map((i) => ({ caption: `photo ${i}` })));
    } finally {
      narrow.close();
    }
  });
});
