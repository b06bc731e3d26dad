// DBClient against a real nachbar-db started as a child process.

import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  AlreadyExistsError,
  DBClient,
  FailedPreconditionError,
  InvalidArgumentError,
  NachbarError,
  NotFoundError,
} from '../src/index';
import { ServerProcess, startServer, tempDir } from './servers';

function assertClose(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) < 1e-5, `${what}: ${actual} is not ${expected}`);
}

async function rejection(promise: Promise<unknown>): Promise<NachbarError> {
  const error = await promise.then(
    () => assert.fail('the call succeeded'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof NachbarError, `not a NachbarError: ${String(error)}`);
  return error;
}

describe('DBClient against nachbar-db', () => {
  let tmp: ReturnType<typeof tempDir>;
  let dataDir: string;
  let server: ServerProcess | undefined;
  let db: DBClient;

  const connect = async (): Promise<void> => {
    server = await startServer('nachbar-db', ['--data-dir', dataDir], tmp.dir);
    db = new DBClient(server.address, { timeoutMs: 20_000 });
  };

  before(async () => {
    tmp = tempDir('nachbar-ts-db-');
    dataDir = path.join(tmp.dir, 'data');
    await connect();
  });

  after(async () => {
    db?.close();
    await server?.stop();
    tmp?.remove();
  });

  it('creates, lists, describes and drops stores', async () => {
    const { store, created } = await db.createStore('lifecycle', 3, {
      metric: 'l2',
      index: { kind: 'hnsw', m: 8 },
      predicateIndexes: ['kind'],
      storeMetadata: { owner: 'ts' },
    });
    assert.equal(created, true);
    assert.equal(store.name, 'lifecycle');
    assert.equal(store.dimension, 3);
    assert.equal(store.metric, 'l2');
    // Every default resolved, as db.proto promises.
    assert.deepEqual(store.index, { kind: 'hnsw', m: 8, efConstruction: 200, efSearch: 64 });
    assert.deepEqual(store.predicateIndexes, ['kind']);
    assert.deepEqual(store.storeMetadata, { owner: 'ts' });
    assert.equal(store.count, 0);

    const again = await rejection(db.createStore('lifecycle', 3, { metric: 'l2' }));
    assert.ok(again instanceof AlreadyExistsError);
    assert.equal(again.code, 'ALREADY_EXISTS');
    assert.equal((await db.createStore('lifecycle', 3, { metric: 'l2', ifNotExists: true })).created, false);

    assert.ok((await db.listStores()).some((s) => s.name === 'lifecycle'));
    const info = await db.info();
    assert.ok(info.storeCount >= 1);
    assert.equal(info.fsyncPolicy, 'full');
    assert.notEqual(info.version, '');
    await db.ping();

    assert.equal(await db.dropStore('lifecycle'), true);
    assert.ok((await rejection(db.getStore('lifecycle'))) instanceof NotFoundError);
    assert.equal(await db.dropStore('lifecycle', { missingOk: true }), false);
    assert.equal((await rejection(db.dropStore('lifecycle'))).code, 'NOT_FOUND');
  });

  it('upserts, reads back and searches with filters', async () => {
    await db.createStore('docs', 3);
    const first = await db.upsert('docs', [
      { id: 'a', vector: [1, 0, 0], metadata: { kind: 'photo', year: 2020, tags: ['cat', 'pet'] } },
      { id: 'b', vector: [0.9, 0.1, 0], metadata: { kind: 'photo', year: 2015, tags: ['dog'] } },
      { id: 'c', vector: new Float32Array([0, 1, 0]), metadata: { kind: 'text', year: 2021 } },
      { id: 'd', vector: [0, 0, 1], metadata: { kind: 'text', year: 2010, draft: true } },
    ]);
    assert.deepEqual(first, { inserted: 4, updated: 0 });
    const bytes = Buffer.from([0, 1, 254, 255]);
    const second = await db.upsert('docs', [
      {
        id: 'a',
        vector: [1, 0, 0],
        metadata: { kind: 'photo', year: 2020, tags: ['cat', 'pet'], ratio: { float: 2 }, huge: 2n ** 62n, raw: bytes, ok: true },
      },
    ]);
    assert.deepEqual(second, { inserted: 0, updated: 1 });

    const got = await db.getKey('docs', ['a', 'nope'], { includeVectors: true });
    assert.deepEqual(got.missingIds, ['nope']);
    assert.equal(got.entries.length, 1);
    assert.deepEqual(got.entries[0]!.vector, [1, 0, 0]);
    assert.deepEqual(got.entries[0]!.metadata, {
      kind: 'photo',
      year: 2020,
      tags: ['cat', 'pet'],
      ratio: 2,
      huge: 2n ** 62n,
      raw: bytes,
      ok: true,
    });

    const nearest = await db.getSimN('docs', [1, 0, 0], 2);
    assert.deepEqual(nearest.matches.map((m) => m.id), ['a', 'b']);
    assertClose(nearest.matches[0]!.similarity, 1, 'cosine of identical vectors');
    assert.ok(['exact', 'hnsw'].includes(nearest.plan));

    const texts = await db.getSimN('docs', [1, 0, 0], 10, { filter: { kind: { eq: 'text' } }, includeVectors: true });
    assert.deepEqual(texts.matches.map((m) => m.id).sort(), ['c', 'd'], 'exactly the matching entries, k larger');
    assert.equal(texts.matches[0]!.vector?.length, 3);
    const pets = await db.getSimN('docs', [0, 0, 1], 10, { filter: { tags: { eq: 'pet' } } });
    assert.deepEqual(pets.matches.map((m) => m.id), ['a']);
    const combined = await db.getSimN('docs', [1, 0, 0], 10, {
      filter: { any_of: [{ year: { gte: 2021 } }, { not: { kind: { in: ['text', 'photo'] } } }] },
      mode: 'exact',
    });
    assert.deepEqual(combined.matches.map((m) => m.id), ['c']);
    const missingField = await db.getSimN('docs', [1, 0, 0], 10, { filter: { draft: { ne: true } } });
    assert.deepEqual(missingField.matches.map((m) => m.id).sort(), ['a', 'b', 'c'], 'ne matches entries without the field');

    const pageOne = await db.getByPredicate('docs', { filter: { year: { gte: 2015 } }, limit: 2 });
    assert.equal(pageOne.entries.length, 2);
    assert.notEqual(pageOne.nextPageToken, '');
    const pageTwo = await db.getByPredicate('docs', { filter: { year: { gte: 2015 } }, limit: 2, pageToken: pageOne.nextPageToken });
    assert.equal(pageTwo.nextPageToken, '');
    assert.deepEqual([...pageOne.entries, ...pageTwo.entries].map((e) => e.id), ['a', 'b', 'c']);

    const unindexed = await db.getSimN('docs', [1, 0, 0], 10, { filter: { year: { lt: 2016 } } });
    assert.equal(await db.createPredIndex('docs', ['year']), 1);
    const indexed = await db.getSimN('docs', [1, 0, 0], 10, { filter: { year: { lt: 2016 } } });
    assert.deepEqual(indexed.matches.map((m) => m.id), unindexed.matches.map((m) => m.id));
    assert.deepEqual((await db.getStore('docs')).predicateIndexes, ['year']);
    assert.equal(await db.dropPredIndex('docs', ['year']), 1);
    assert.equal((await rejection(db.dropPredIndex('docs', ['year']))).code, 'NOT_FOUND');
    assert.equal(await db.dropPredIndex('docs', ['year'], { missingOk: true }), 0);

    assert.equal(await db.deleteKeys('docs', ['a', 'nope']), 1);
    assert.equal(await db.deleteByPredicate('docs', { kind: { eq: 'text' } }), 2);
    assert.equal((await db.getStore('docs')).count, 1);
  });

  it('reports a missing store as NOT_FOUND and a wrong dimension as INVALID_ARGUMENT', async () => {
    const missing = await rejection(db.getStore('no-such-store'));
    assert.ok(missing instanceof NotFoundError);
    assert.equal(missing.code, 'NOT_FOUND');
    assert.match(missing.message, /no-such-store/);
    assert.equal((await rejection(db.getSimN('no-such-store', [1, 0, 0], 1))).code, 'NOT_FOUND');

    await db.createStore('dims', 3);
    const upsert = await rejection(db.upsert('dims', [{ id: 'x', vector: [1, 2] }]));
    assert.ok(upsert instanceof InvalidArgumentError);
    assert.equal(upsert.code, 'INVALID_ARGUMENT');
    const search = await rejection(db.getSimN('dims', [1, 2, 3, 4], 1));
    assert.equal(search.code, 'INVALID_ARGUMENT');
    assert.equal((await db.getStore('dims')).count, 0, 'a refused batch stores nothing');
  });

  it('diversifies with MMR and recommends by examples', async () => {
    await db.createStore('explore', 2);
    await db.upsert('explore', [
      { id: 'a', vector: [1, 0] },
      { id: 'a2', vector: [0.99, 0.05] },
      { id: 'a3', vector: [0.98, 0.08] },
      { id: 'b', vector: [0, 1] },
    ]);
    const plain = await db.getSimN('explore', [1, 0.02], 2);
    assert.deepEqual(plain.matches.map((m) => m.id), ['a', 'a2']);
    const diverse = await db.getSimN('explore', [1, 0.02], 2, { mmr: 0.3 });
    assert.deepEqual(diverse.matches.map((m) => m.id), ['a', 'b']);
    assertClose(diverse.matches[1]!.similarity, 0.02 / Math.hypot(1, 0.02), 'similarity to the query');
    const liked = await db.getSimN('explore', null, 2, { positive: ['a'], negative: ['b'] });
    assert.deepEqual(liked.matches.map((m) => m.id), ['a2', 'a3']);
    const best = await db.getSimN('explore', null, 1, { positive: ['a3'], strategy: 'best_score' });
    assert.deepEqual(best.matches.map((m) => m.id), ['a2']);
    const missing = await rejection(db.getSimN('explore', null, 2, { positive: ['zz'] }));
    assert.ok(missing instanceof NotFoundError);
    assert.match(missing.message, /'zz'/);
    const bad = await rejection(db.getSimN('explore', [1, 0], 2, { mmr: 1.5 }));
    assert.ok(bad instanceof InvalidArgumentError);
    assert.match(bad.message, /mmr lambda 1.5 is out of range/);
  });

  it('searches by keywords, hybrid and keyword-only, with each side\'s score', async () => {
    const { store } = await db.createStore('hybrid', 2, { keywordFields: ['text'] });
    assert.deepEqual(store.keywordFields, ['text']);
    await db.upsert('hybrid', [
      { id: 'a', vector: [1, 0], metadata: { text: 'apt pinning howto' } },
      { id: 'b', vector: [0, 1], metadata: { text: 'network bridges' } },
    ]);
    const hybrid = await db.getSimN('hybrid', [0, 1], 2, { keywords: 'apt', hybrid: { fusion: 'rrf' } });
    assert.deepEqual(hybrid.matches.map((m) => m.id).sort(), ['a', 'b']);
    const a = hybrid.matches.find((m) => m.id === 'a');
    const b = hybrid.matches.find((m) => m.id === 'b');
    assert.ok(a?.keywordScore !== undefined && a.keywordScore > 0);
    assert.equal(b?.keywordScore, undefined);
    assertClose(b?.hybridScore ?? 0, 1 / 61, 'b: first by vector only');
    assertClose(a?.hybridScore ?? 0, 1 / 62 + 1 / 61, 'a: second by vector, first by keyword');
    const only = await db.getSimN('hybrid', null, 5, { keywords: 'NEAR(network" *' });
    assert.deepEqual(only.matches.map((m) => m.id), ['b']);
    assert.equal(only.matches[0]?.vectorScore, undefined);
    assert.equal(only.plan, 'keyword');
    const blank = await rejection(db.getSimN('hybrid', null, 1, { keywords: '  ' }));
    assert.ok(blank instanceof InvalidArgumentError && /whitespace/.test(blank.message), blank.message);

    await db.createStore('later', 2);
    await db.upsert('later', [{ id: 'x', vector: [1, 0], metadata: { title: 'Café' } }]);
    const missing = await rejection(db.getSimN('later', [1, 0], 1, { keywords: 'cafe' }));
    assert.ok(missing instanceof FailedPreconditionError, missing.message);
    assert.deepEqual(await db.createKeywordIndex('later', ['title']), { created: true, indexed: 1 });
    const found = await db.getSimN('later', null, 1, { keywords: 'cafe' });
    assert.deepEqual(found.matches.map((m) => m.id), ['x']);
    assert.equal(await db.dropKeywordIndex('later'), true);
    assert.equal(await db.dropKeywordIndex('later', { missingOk: true }), false);
  });

  it('finds its stores again after a restart', async () => {
    await db.createStore('durable', 2);
    await db.upsert('durable', [{ id: 'kept', vector: [0.5, 0.5], metadata: { n: 1 } }]);
    db.close();
    await server!.stop();
    await connect();
    const got = await db.getKey('durable', ['kept']);
    assert.deepEqual(got.entries, [{ id: 'kept', metadata: { n: 1 } }]);
  });
});
