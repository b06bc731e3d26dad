// TLS and API keys against a real nachbar-db: certificates made at run time by the repo's
// tests/certs.py, keys by `nachbar keys create`.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { DBClient, NachbarError, PermissionDeniedError, UnauthenticatedError, UnavailableError } from '../src/index';
import { BIN_DIR, REPO_DIR, ServerProcess, startServer, tempDir } from './servers';

async function rejection(promise: Promise<unknown>): Promise<NachbarError> {
  const error = await promise.then(
    () => assert.fail('the call succeeded'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof NachbarError, `not a NachbarError: ${String(error)}`);
  return error;
}

function createKey(keysFile: string, role: string): string {
  const out = execFileSync(path.join(BIN_DIR, 'nachbar'), ['keys', 'create', '--keys-file', keysFile, '--role', role], {
    encoding: 'utf8',
  });
  return out.trim().split('\n').at(-1) ?? '';
}

describe('DBClient over TLS with API keys', () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: ServerProcess | undefined;
  let ca: string;
  let readKey: string;
  let adminKey: string;

  before(async () => {
    tmp = tempDir('nachbar-ts-tls-');
    const certs = path.join(tmp.dir, 'certs');
    execFileSync(path.join(BIN_DIR, 'python'), ['-m', 'tests.certs', certs], { cwd: REPO_DIR });
    ca = path.join(certs, 'nachbar-ca.pem');
    const keysFile = path.join(tmp.dir, 'keys.json');
    readKey = createKey(keysFile, 'read');
    adminKey = createKey(keysFile, 'admin');
    server = await startServer(
      'nachbar-db',
      [
        ...['--data-dir', path.join(tmp.dir, 'data'), '--api-keys-file', keysFile],
        ...['--tls-cert', path.join(certs, 'server.pem'), '--tls-key', path.join(certs, 'server-key.pem')],
      ],
      tmp.dir,
      grpc.credentials.createSsl(readFileSync(ca)),
    );
  });

  after(async () => {
    await server?.stop();
    tmp?.remove();
  });

  it('works with the CA and a key, and each role gets what it may', async () => {
    const admin = new DBClient(server!.address, { tlsCa: ca, apiKey: adminKey, timeoutMs: 10_000 });
    const reader = new DBClient(server!.address, { tlsCa: readFileSync(ca), apiKey: readKey, timeoutMs: 10_000 });
    try {
      await admin.createStore('docs', 2);
      assert.deepEqual(
        (await reader.listStores()).map((s) => s.name),
        ['docs'],
      );
      const denied = await rejection(reader.dropStore('docs'));
      assert.ok(denied instanceof PermissionDeniedError);
      assert.match(denied.message, /has role read; DropStore needs admin/);
    } finally {
      admin.close();
      reader.close();
    }
  });

  it('refuses a missing key, and a client without the CA says what to pass', async () => {
    const anonymous = new DBClient(server!.address, { tlsCa: ca, apiKey: '', timeoutMs: 10_000 });
    const untrusting = new DBClient(server!.address, { tls: true, apiKey: readKey, timeoutMs: 10_000 });
    try {
      const refused = await rejection(anonymous.listStores());
      assert.ok(refused instanceof UnauthenticatedError);
      const noCa = await rejection(untrusting.listStores());
      assert.ok(noCa instanceof UnavailableError);
      assert.match(noCa.message, /pass the CA that signed it as tlsCa/);
    } finally {
      anonymous.close();
      untrusting.close();
    }
  });
});
