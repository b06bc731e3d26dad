// The TypeScript and the Python client against one scripted server: the same calls, with every
// option left out, must send the same requests (and deadlines), so the two clients agree on every
// default. Both read the defaults from proto/nachbar/v1/defaults.json.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { AIClient, DBClient, DEFAULT_AI_ADDRESS, DEFAULT_DB_ADDRESS, DEFAULTS, DEFAULT_TIMEOUT_MS } from '../src/index';
import { aiService, dbService } from '../src/protos';
import { BIN_DIR, REPO_DIR } from './servers';

interface Received {
  method: string;
  request: Record<string, unknown>;
  deadlineInMs: number;
}

const STORE_INFO = { name: 's', dimension: 3, metric: 'METRIC_COSINE', index: { exact: {} } };
/** Replies the clients need to parse; every other method gets an empty reply. */
const REPLIES: Record<string, object> = {
  '/nachbar.ai.v1.AIService/CreateStore': { store: { name: 't', db_store: STORE_INFO }, created: true },
  '/nachbar.db.v1.DBService/CreateStore': { store: STORE_INFO, created: true },
};

/** Answers every method of both services and logs what arrives, in order. */
class RecordingServer {
  readonly log: Received[] = [];
  private readonly server = new grpc.Server();

  constructor() {
    for (const definition of [aiService(), dbService()] as unknown as grpc.ServiceDefinition[]) {
      const handlers: grpc.UntypedServiceImplementation = {};
      for (const name of Object.keys(definition)) {
        handlers[name] = (call: grpc.ServerUnaryCall<Record<string, unknown>, object>, callback: grpc.sendUnaryData<object>) => {
          const deadline = call.getDeadline();
          const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
          this.log.push({ method: definition[name]!.path, request: call.request, deadlineInMs: deadlineMs - Date.now() });
          callback(null, REPLIES[definition[name]!.path] ?? {});
        };
      }
      this.server.addService(definition, handlers);
    }
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

/** The calls of tests/clients/default_calls.py, in the same order. */
async function typescriptCalls(address: string): Promise<void> {
  const ai = new AIClient(address);
  const db = new DBClient(address);
  try {
    await ai.createStore('t', { queryModel: 'q' });
    await ai.dropStore('t');
    await ai.upsert('t', [{ input: 'hello' }]);
    await ai.getSimN('t', 'a dog', 3);
    await ai.getKey('t', ['a']);
    await ai.getByPredicate('t');
    await ai.deleteKeys('t', ['a']);
    await ai.embed('m', ['x']);
    await ai.rerank('ce', 'q', ['a', 'b']);
    await ai.listAdapters('t');
    await ai.dropAdapter('t', 'v1');
    await ai.dropRescorer('t', 'r1');
    await db.createStore('s', 3);
    await db.dropStore('s');
    await db.upsert('s', [{ id: 'a', vector: [1, 0, 0.5] }]);
    await db.getKey('s', ['a']);
    await db.getByPredicate('s');
    await db.getSimN('s', [1, 0, 0], 3);
    await db.deleteKeys('s', ['a']);
    await db.dropPredIndex('s', ['n']);
  } finally {
    ai.close();
    db.close();
  }
}

describe('the TypeScript and the Python client', () => {
  const server = new RecordingServer();
  let address = '';

  before(async () => {
    address = await server.start();
  });

  after(() => server.stop());

  it('send the same requests when every option is left to its default', async () => {
    server.log.length = 0;
    await typescriptCalls(address);
    const fromTypescript = server.log.splice(0);
    await promisify(execFile)(path.join(BIN_DIR, 'python'), ['-m', 'tests.clients.default_calls', address], {
      cwd: REPO_DIR,
      timeout: 60_000,
    });
    const fromPython = server.log.splice(0);
    assert.deepEqual(
      fromPython.map((r) => r.method),
      fromTypescript.map((r) => r.method),
    );
    assert.ok(fromPython.length >= 17);
    fromPython.forEach((python, i) => {
      const typescript = fromTypescript[i]!;
      assert.deepEqual(python.request, typescript.request, `${python.method}: requests differ`);
      // gRPC rounds the deadline it sends, so allow a little on either side.
      const budget = DEFAULTS.timeout_seconds * 1000;
      for (const { method, deadlineInMs } of [python, typescript]) {
        assert.ok(Math.abs(deadlineInMs - budget) < 2_000, `${method}: deadline in ${deadlineInMs} ms`);
      }
    });
  });

  it('take their defaults from the one file in proto/', () => {
    const shared = JSON.parse(readFileSync(path.join(REPO_DIR, 'proto', 'nachbar', 'v1', 'defaults.json'), 'utf8'));
    assert.deepEqual({ ...DEFAULTS }, shared);
    assert.equal(DEFAULT_AI_ADDRESS, `${shared.host}:${shared.ai_port}`);
    assert.equal(DEFAULT_DB_ADDRESS, `${shared.host}:${shared.db_port}`);
    assert.equal(DEFAULT_TIMEOUT_MS, shared.timeout_seconds * 1000);
  });
});
