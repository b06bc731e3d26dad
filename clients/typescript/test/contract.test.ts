// The clients against a scripted in-process gRPC server built from the same .proto files: every
// RPC has a method, every call carries a deadline, requests and replies convert as documented.

import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import {
  AIClient,
  CancelledError,
  DBClient,
  DeadlineExceededError,
  InvalidArgumentError,
  NachbarError,
  UnavailableError,
} from '../src/index';
import { aiService, dbService } from '../src/protos';

const CLIENT_TIMEOUT_MS = 5_000;

interface Received {
  request: Record<string, unknown>;
  /** Milliseconds from arrival to the call's deadline; Infinity when it has none. */
  deadlineInMs: number;
}

/** Answers every method of a service with a canned reply, records what arrives, and can hang. */
class FakeServer {
  readonly received = new Map<string, Received>();
  readonly replies: Record<string, object> = {};
  readonly hanging = new Set<string>();
  private readonly server = new grpc.Server();

  constructor(definition: grpc.ServiceDefinition) {
    const handlers: grpc.UntypedServiceImplementation = {};
    for (const name of Object.keys(definition)) {
      handlers[name] = (call: grpc.ServerUnaryCall<Record<string, unknown>, object>, callback: grpc.sendUnaryData<object>) => {
        const deadline = call.getDeadline();
        const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
        this.received.set(name, { request: call.request, deadlineInMs: deadlineMs - Date.now() });
        if (!this.hanging.has(name)) callback(null, this.replies[name] ?? {});
      };
    }
    this.server.addService(definition, handlers);
  }

  start(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error) reject(error);
        else resolve(`127.0.0.1:${port}`);
      });
    });
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

function rpcNames(definition: grpc.ServiceDefinition): string[] {
  return Object.keys(definition).sort();
}

function camel(rpc: string): string {
  return rpc[0]!.toLowerCase() + rpc.slice(1);
}

const STORE_INFO = {
  name: 's',
  dimension: 3,
  metric: 'METRIC_L2',
  index: { hnsw: { m: 16, ef_construction: 200, ef_search: 64 } },
  predicate_indexes: ['kind'],
  count: '2',
  bytes_used: '4096',
  store_metadata: { owner: 'test' },
};

const DB_CALLS: Record<string, (client: DBClient) => Promise<unknown>> = {
  CreateStore: (c) =>
    c.createStore('s', 3, { metric: 'l2', index: { kind: 'exact' }, predicateIndexes: ['kind'], storeMetadata: { a: 'b' }, ifNotExists: true }),
  DropStore: (c) => c.dropStore('s', { missingOk: true }),
  ListStores: (c) => c.listStores(),
  GetStore: (c) => c.getStore('s'),
  Upsert: (c) => c.upsert('s', [{ id: 'a', vector: new Float32Array([1, 0, 0.5]), metadata: { n: 1, big: 2n ** 60n } }]),
  GetKey: (c) => c.getKey('s', ['a', 'zz'], { includeVectors: true }),
  GetByPredicate: (c) => c.getByPredicate('s', { filter: { n: { gt: 0 } }, limit: 5, pageToken: 't' }),
  GetSimN: (c) => c.getSimN('s', [1, 0, 0], 2, { filter: { n: { eq: 1 } }, mode: 'exact', ef: 50 }),
  DeleteKeys: (c) => c.deleteKeys('s', ['a']),
  DeleteByPredicate: (c) => c.deleteByPredicate('s', { n: { eq: 1 } }),
  CreatePredIndex: (c) => c.createPredIndex('s', ['n']),
  DropPredIndex: (c) => c.dropPredIndex('s', ['n'], { missingOk: true }),
  CreateKeywordIndex: (c) => c.createKeywordIndex('s', ['text']),
  DropKeywordIndex: (c) => c.dropKeywordIndex('s', { missingOk: true }),
  Info: (c) => c.info(),
  Ping: (c) => c.ping(),
};

const TRAINED = {
  store: 't',
  name: 'v1',
  state: 'TRAIN_STATE_READY',
  progress: 1,
  before: { mrr_at_10: 0.25, recall_at_10: 0.5, queries: 4 },
  after: { mrr_at_10: 0.5, recall_at_10: 0.75, queries: 4 },
  recommended: true,
  dimension: 384,
  weight_bytes: '589824',
};

const AI_CALLS: Record<string, (client: AIClient) => Promise<unknown>> = {
  CreateStore: (c) => c.createStore('t', { queryModel: 'q', indexModel: 'i', storeOriginal: true }),
  DropStore: (c) => c.dropStore('t'),
  ListStores: (c) => c.listStores(),
  GetStore: (c) => c.getStore('t'),
  Upsert: (c) => c.upsert('t', [{ input: 'hello' }, { id: 'img', input: Buffer.from([0xff, 0xd8]), metadata: { kind: 'photo' } }], { truncation: 'truncate' }),
  GetSimN: (c) => c.getSimN('t', 'a dog', 3, { rerank: { model: 'ce', metadataField: 'caption', fusion: 'blend' }, queryModelOverride: 'q8' }),
  GetKey: (c) => c.getKey('t', ['a']),
  GetByPredicate: (c) => c.getByPredicate('t', { filter: { kind: { eq: 'photo' } } }),
  DeleteKeys: (c) => c.deleteKeys('t', ['a']),
  DeleteByPredicate: (c) => c.deleteByPredicate('t', { kind: { eq: 'photo' } }),
  Embed: (c) => c.embed('m', ['text', { image: Buffer.from([1]) }]),
  Rerank: (c) => c.rerank('ce', 'q', ['a', 'b'], { topK: 1, sigmoid: true }),
  ListModels: (c) => c.listModels(),
  Info: (c) => c.info(),
  Ping: (c) => c.ping(),
  TrainAdapter: (c) =>
    c.trainAdapter('t', 'v1', [{ query: 'q', relevantIds: ['a'], irrelevantIds: ['b'] }, { query: Buffer.from([1]), relevantIds: ['c'] }], {
      settings: { epochs: 5, identityWeight: 0.5 },
    }),
  GetAdapter: (c) => c.getAdapter('t', 'v1'),
  ListAdapters: (c) => c.listAdapters('t'),
  DropAdapter: (c) => c.dropAdapter('t', 'v1', { missingOk: true }),
  TrainRescorer: (c) => c.trainRescorer('t', 'r1', [{ query: 'q', relevantIds: ['a'] }]),
  GetRescorer: (c) => c.getRescorer('t', 'r1'),
  ListRescorers: (c) => c.listRescorers('t'),
  DropRescorer: (c) => c.dropRescorer('t', 'r1'),
};

describe('DBClient against a scripted server', () => {
  const fake = new FakeServer(dbService());
  let client: DBClient;

  before(async () => {
    fake.replies['CreateStore'] = { store: STORE_INFO, created: true };
    fake.replies['GetStore'] = { store: STORE_INFO };
    fake.replies['ListStores'] = { stores: [STORE_INFO] };
    fake.replies['Upsert'] = { inserted: '1', updated: '0' };
    fake.replies['GetKey'] = {
      entries: [
        {
          id: 'a',
          vector: [0.5, 0.25],
          metadata: {
            n: { int_value: '42' },
            big: { int_value: '9007199254740993' },
            f: { float_value: 2 },
            yes: { bool_value: true },
            raw: { bytes_value: Buffer.from([1, 2]) },
            tags: { string_list_value: { values: ['x', 'y'] } },
          },
        },
      ],
      missing_ids: ['zz'],
    };
    fake.replies['GetSimN'] = { matches: [{ id: 'a', similarity: 0.75, metadata: {} }], plan: 'exact' };
    fake.replies['DeleteKeys'] = { deleted: '1' };
    fake.replies['Info'] = { version: '0.1.0', store_count: 1, fsync_policy: 'full', max_message_bytes: '67108864', uptime_seconds: 1.5 };
    client = new DBClient(await fake.start(), { timeoutMs: CLIENT_TIMEOUT_MS });
  });

  after(() => {
    client.close();
    fake.stop();
  });

  beforeEach(() => fake.received.clear());

  it('has a method for every RPC of DBService, each sending a deadline', async () => {
    assert.deepEqual(Object.keys(DB_CALLS).sort(), rpcNames(dbService()));
    for (const [rpc, call] of Object.entries(DB_CALLS)) {
      assert.equal(typeof (DBClient.prototype as unknown as Record<string, unknown>)[camel(rpc)], 'function', rpc);
      await call(client);
      const received = fake.received.get(rpc);
      assert.ok(received, `${rpc} did not reach the server`);
      assert.ok(received.deadlineInMs > 0 && received.deadlineInMs <= CLIENT_TIMEOUT_MS, `${rpc}: deadline in ${received.deadlineInMs} ms`);
    }
  });

  it('sends options as the proto fields they name', async () => {
    await DB_CALLS['CreateStore']!(client);
    const create = fake.received.get('CreateStore')!.request;
    assert.equal(create['metric'], 'METRIC_L2');
    assert.equal((create['index'] as Record<string, unknown>)['kind'], 'exact');
    assert.deepEqual(create['predicate_indexes'], ['kind']);
    assert.deepEqual(create['store_metadata'], { a: 'b' });
    assert.equal(create['if_not_exists'], true);

    await DB_CALLS['Upsert']!(client);
    const [entry] = fake.received.get('Upsert')!.request['entries'] as Array<Record<string, unknown>>;
    assert.deepEqual(entry!['vector'], [1, 0, 0.5]);
    assert.deepEqual(entry!['metadata'], { n: { int_value: '1', kind: 'int_value' }, big: { int_value: '1152921504606846976', kind: 'int_value' } });

    await DB_CALLS['GetSimN']!(client);
    const search = fake.received.get('GetSimN')!.request;
    assert.equal(search['mode'], 'SEARCH_MODE_EXACT');
    assert.equal(search['ef'], 50);
    assert.equal(search['k'], 2);

    await client.getSimN('s', null, 3, { keywords: 'apt', hybrid: { fusion: 'blend', vectorWeight: 0.25, candidates: 50 } });
    const hybrid = fake.received.get('GetSimN')!.request;
    assert.deepEqual(hybrid['query'], []);
    assert.equal(hybrid['keywords'], 'apt');
    const options = hybrid['hybrid'] as Record<string, unknown>;
    assert.equal(options['fusion'], 'HYBRID_FUSION_BLEND');
    assert.equal(options['vector_weight'], 0.25);
    assert.equal(options['candidates'], 50);
    assert.equal(search['_mmr_lambda'], undefined, 'no MMR unless asked');
    assert.deepEqual(search['positive_ids'], []);
  });

  it('sends MMR and examples as GetSimN fields, with no query when examples stand for it', async () => {
    await client.getSimN('s', null, 3, {
      mmr: 0.25,
      mmrCandidates: 40,
      positive: ['a', 'b'],
      negative: ['c'],
      strategy: 'best_score',
      recommendCandidates: 30,
    });
    const search = fake.received.get('GetSimN')!.request;
    assert.deepEqual(search['query'], []);
    assert.equal(search['mmr_lambda'], 0.25);
    assert.equal(search['mmr_candidates'], 40);
    assert.deepEqual(search['positive_ids'], ['a', 'b']);
    assert.deepEqual(search['negative_ids'], ['c']);
    assert.equal(search['recommend_strategy'], 'RECOMMEND_STRATEGY_BEST_SCORE');
    assert.equal(search['recommend_candidates'], 30);
    await assert.rejects(client.getSimN('s', null, 3, { positive: ['a'], strategy: 'worst' as never }), InvalidArgumentError);
    await assert.rejects(client.getSimN('s', [1, 0, 0], 3, { strategy: 'best_score' }), /need positive or negative ids/);
    await assert.rejects(client.getSimN('s', [1, 0, 0], 3, { mmrCandidates: 30 }), /mmrCandidates needs mmr/);
  });

  it('converts replies to plain values', async () => {
    const info = (await client.getStore('s')).index;
    assert.deepEqual(info, { kind: 'hnsw', m: 16, efConstruction: 200, efSearch: 64 });
    const store = await client.getStore('s');
    assert.equal(store.metric, 'l2');
    assert.equal(store.count, 2);
    assert.equal(store.bytesUsed, 4096);
    assert.deepEqual(store.storeMetadata, { owner: 'test' });

    const got = await client.getKey('s', ['a', 'zz'], { includeVectors: true });
    assert.deepEqual(got.missingIds, ['zz']);
    assert.deepEqual(got.entries[0], {
      id: 'a',
      vector: [0.5, 0.25],
      metadata: { n: 42, big: 9007199254740993n, f: 2, yes: true, raw: Buffer.from([1, 2]), tags: ['x', 'y'] },
    });
    const withoutVectors = await client.getKey('s', ['a']);
    assert.equal(withoutVectors.entries[0]!.vector, undefined);

    assert.deepEqual(await client.upsert('s', []), { inserted: 0, updated: 0 });
    assert.equal(fake.received.has('Upsert'), false, 'an empty upsert sends nothing');
    assert.deepEqual(await client.info(), { version: '0.1.0', storeCount: 1, fsyncPolicy: 'full', maxMessageBytes: 67108864, uptimeSeconds: 1.5 });
  });

  it('splits a large upsert into batches and sums their counts', async () => {
    const entries = Array.from({ length: 5 }, (_, i) => ({ id: `e${i}`, vector: [i, 0, 0] }));
    const result = await client.upsert('s', entries, { batchSize: 2 });
    assert.deepEqual(result, { inserted: 3, updated: 0 }); // three requests, each answered "1 inserted"
    assert.deepEqual((fake.received.get('Upsert')!.request['entries'] as Array<{ id: string }>).map((e) => e.id), ['e4']);
  });

  it('rejects bad arguments before sending', async () => {
    await assert.rejects(client.getSimN('s', [1, 0, 0], -1), InvalidArgumentError);
    await assert.rejects(client.getSimN('s', 'abc' as never, 1), InvalidArgumentError);
    await assert.rejects(client.createStore('s', 3, { metric: 'manhattan' as never }), /unknown metric "manhattan"/);
    await assert.rejects(client.getByPredicate('s', { filter: { n: { near: 1 } } as never }), /unknown filter operator/);
    await assert.rejects(client.ping({ timeoutMs: 0 }), /timeoutMs must be a positive number/);
    assert.equal(fake.received.size, 0);
    assert.throws(() => new DBClient('127.0.0.1:1', { timeoutMs: Number.NaN }), InvalidArgumentError);
  });

  it('honours the deadline of a call the server never answers', async () => {
    fake.hanging.add('GetStore');
    try {
      const error = await client.getStore('s', { timeoutMs: 200 }).then(
        () => assert.fail('a hanging call resolved'),
        (e: unknown) => e,
      );
      assert.ok(error instanceof DeadlineExceededError, String(error));
      assert.equal(error.code, 'DEADLINE_EXCEEDED');
      assert.equal(error.method, '/nachbar.db.v1.DBService/GetStore');
      assert.ok(fake.received.get('GetStore')!.deadlineInMs <= 200);
    } finally {
      fake.hanging.delete('GetStore');
    }
  });

  it('cancels a call when its AbortSignal fires', async () => {
    fake.hanging.add('Ping');
    try {
      const controller = new AbortController();
      const pending = client.ping({ signal: controller.signal, timeoutMs: 60_000 });
      setImmediate(() => controller.abort());
      await assert.rejects(pending, CancelledError);
      await assert.rejects(client.ping({ signal: controller.signal }), /cancelled before it started/);
    } finally {
      fake.hanging.delete('Ping');
    }
  });
});

describe('AIClient against a scripted server', () => {
  const fake = new FakeServer(aiService());
  let client: AIClient;

  before(async () => {
    const store = { name: 't', query_model: 'q', index_model: 'i', store_original: true, db_store: STORE_INFO };
    fake.replies['CreateStore'] = { store, created: true };
    fake.replies['GetStore'] = { store };
    fake.replies['ListStores'] = { stores: [store] };
    fake.replies['Upsert'] = { inserted: '2', updated: '0', ids: ['h1', 'img'] };
    fake.replies['GetSimN'] = {
      matches: [
        { id: 'a', similarity: 0.5, rerank_score: 0.25, fused_score: 1.5, metadata: { kind: { string_value: 'photo' } }, original: { image: Buffer.from([7]) } },
        { id: 'b', similarity: 0.75, metadata: {}, original: { text: 'hello' } },
      ],
      plan: 'hnsw',
    };
    fake.replies['Embed'] = { embeddings: [{ values: [0.5, 0.5] }, { values: [1, 0] }], dimension: 2 };
    fake.replies['Rerank'] = { results: [{ index: 1, score: 0.75 }] };
    for (const rpc of ['TrainAdapter', 'GetAdapter']) fake.replies[rpc] = { adapter: TRAINED };
    for (const rpc of ['TrainRescorer', 'GetRescorer']) fake.replies[rpc] = { rescorer: TRAINED };
    fake.replies['ListAdapters'] = { adapters: [TRAINED] };
    fake.replies['ListRescorers'] = { rescorers: [] };
    fake.replies['ListModels'] = {
      models: [{ name: 'm', kind: 'MODEL_KIND_CROSS_ENCODER', modality: 'MODALITY_TEXT', max_tokens: 512, precision: 'int8' }],
    };
    client = new AIClient(await fake.start(), { timeoutMs: CLIENT_TIMEOUT_MS });
  });

  after(() => {
    client.close();
    fake.stop();
  });

  beforeEach(() => fake.received.clear());

  it('sends MMR and examples as GetSimN fields, with no query input when examples stand for it', async () => {
    await client.getSimN('t', null, 2, { positive: ['p'], mmr: 0.5 });
    const search = fake.received.get('GetSimN')!.request;
    assert.equal(search['query'], null);
    assert.deepEqual(search['positive_ids'], ['p']);
    assert.equal(search['mmr_lambda'], 0.5);
    assert.equal(search['recommend_strategy'], 'RECOMMEND_STRATEGY_AVERAGE_VECTOR');
  });

  it('has a method for every RPC of AIService, each sending a deadline', async () => {
    assert.deepEqual(Object.keys(AI_CALLS).sort(), rpcNames(aiService()));
    for (const [rpc, call] of Object.entries(AI_CALLS)) {
      assert.equal(typeof (AIClient.prototype as unknown as Record<string, unknown>)[camel(rpc)], 'function', rpc);
      await call(client);
      const received = fake.received.get(rpc);
      assert.ok(received, `${rpc} did not reach the server`);
      assert.ok(received.deadlineInMs > 0 && received.deadlineInMs <= CLIENT_TIMEOUT_MS, `${rpc}: deadline in ${received.deadlineInMs} ms`);
    }
  });

  it('sends text and image inputs, truncation and rerank options', async () => {
    const result = await AI_CALLS['Upsert']!(client);
    assert.deepEqual(result, { inserted: 2, updated: 0, ids: ['h1', 'img'] });
    const upsert = fake.received.get('Upsert')!.request;
    assert.equal(upsert['truncation'], 'TRUNCATION_POLICY_TRUNCATE');
    const [text, image] = upsert['entries'] as Array<{ id: string; input: Record<string, unknown> }>;
    assert.equal(text!.id, '');
    assert.equal(text!.input['text'], 'hello');
    assert.deepEqual(image!.input['image'], Buffer.from([0xff, 0xd8]));

    await AI_CALLS['GetSimN']!(client);
    const search = fake.received.get('GetSimN')!.request;
    assert.equal(search['query_model_override'], 'q8');
    assert.deepEqual(
      { ...(search['rerank'] as object) },
      { model: 'ce', candidates: 0, sigmoid: false, fusion: 'RERANK_FUSION_BLEND', metadata_field: 'caption', text_source: 'metadata_field', rescorer: '' },
    );
  });

  it('sends adapters, re-scorers and training examples, and reads what was trained', async () => {
    await client.getSimN('t', 'a dog', 3, { adapter: 'v1', rescorer: { name: 'r1', candidates: 30 } });
    const search = fake.received.get('GetSimN')!.request;
    assert.equal(search['adapter'], 'v1');
    assert.equal((search['rerank'] as Record<string, unknown>)['rescorer'], 'r1');
    assert.equal((search['rerank'] as Record<string, unknown>)['candidates'], 30);
    const info = await AI_CALLS['TrainAdapter']!(client);
    const train = fake.received.get('TrainAdapter')!.request;
    const [text, image] = train['examples'] as Array<Record<string, unknown>>;
    assert.deepEqual(text!['relevant_ids'], ['a']);
    assert.deepEqual(text!['irrelevant_ids'], ['b']);
    assert.deepEqual((image!['query'] as Record<string, unknown>)['image'], Buffer.from([1]));
    assert.equal((train['options'] as Record<string, unknown>)['epochs'], 5);
    assert.equal((train['options'] as Record<string, unknown>)['identity_weight'], 0.5);
    assert.deepEqual(
      { state: (info as { state: string }).state, mrr: (info as { after: { mrrAt10: number } }).after.mrrAt10 },
      { state: 'ready', mrr: 0.5 },
    );
    assert.equal((await client.getAdapter('t', 'v1')).weightBytes, 589824);
    await assert.rejects(
      client.getSimN('t', 'q', 1, { rerank: { model: 'ce', originalText: true }, rescorer: { name: 'r1' } }),
      /not both/,
    );
  });

  it('converts matches, originals, embeddings and models', async () => {
    const found = await client.getSimN('t', 'a dog', 2);
    assert.deepEqual(found.matches, [
      { id: 'a', similarity: 0.5, rerankScore: 0.25, fusedScore: 1.5, metadata: { kind: 'photo' }, original: Buffer.from([7]) },
      { id: 'b', similarity: 0.75, metadata: {}, original: 'hello' },
    ]);
    assert.deepEqual(await client.embed('m', ['x', 'y']), { embeddings: [[0.5, 0.5], [1, 0]], dimension: 2 });
    assert.deepEqual(await client.rerank('ce', 'q', ['a', 'b']), [{ index: 1, score: 0.75 }]);
    const [model] = await client.listModels();
    assert.equal(model!.kind, 'cross_encoder');
    assert.equal(model!.modality, 'text');
    assert.equal(model!.maxTokens, 512);
    assert.equal((await client.getStore('t')).dbStore.dimension, 3);
  });

  it('refuses inputs that are neither text nor image bytes, and rerank without a text source', async () => {
    await assert.rejects(client.embed('m', [42 as never]), /must be a string \(text\), a Uint8Array/);
    await assert.rejects(client.getSimN('t', 'q', 1, { rerank: { model: 'ce' } }), /rerank needs the documents' text/);
    assert.equal(fake.received.size, 0);
  });
});

describe('an unreachable server', () => {
  it('fails with UnavailableError naming the address', async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = probe.address() as { port: number };
        probe.close(() => resolve(free));
      });
    });
    const client = new DBClient(`127.0.0.1:${port}`, { timeoutMs: 10_000 });
    try {
      const error = await client.ping().then(
        () => assert.fail('ping to a closed port resolved'),
        (e: unknown) => e,
      );
      assert.ok(error instanceof UnavailableError, String(error));
      assert.ok(error instanceof NachbarError);
      assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
    } finally {
      client.close();
    }
  });
});
