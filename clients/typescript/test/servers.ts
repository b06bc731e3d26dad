// Starts the real nachbar servers as child processes on OS-chosen ports, the way a user would
// run them, and waits until grpc.health.v1 reports SERVING.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The repo root (dist/test -> dist -> clients/typescript -> clients -> repo). */
export const REPO_DIR = process.env['NACHBAR_REPO_DIR'] ?? path.resolve(__dirname, '..', '..', '..', '..');
export const BIN_DIR = process.env['NACHBAR_BIN_DIR'] ?? path.join(REPO_DIR, '.venv', 'bin');
const HEALTH_PROTO = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'health.proto');
const START_TIMEOUT_MS = 120_000;
let starts = 0;

interface HealthReply {
  status: string;
}

interface HealthClient extends grpc.Client {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, reply?: HealthReply) => void,
  ): void;
}

function healthClient(address: string, credentials: grpc.ChannelCredentials): HealthClient {
  const definition = protoLoader.loadSync(HEALTH_PROTO, { enums: String, defaults: true });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: new (address: string, credentials: grpc.ChannelCredentials) => HealthClient } } };
  };
  return new loaded.grpc.health.v1.Health(address, credentials);
}

function checkHealth(client: HealthClient): Promise<string> {
  return new Promise((resolve) => {
    client.Check({ service: '' }, { deadline: Date.now() + 2_000 }, (error, reply) => {
      resolve(error ? grpc.status[error.code] ?? String(error.code) : (reply?.status ?? 'UNKNOWN'));
    });
  });
}

export class ServerProcess {
  constructor(
    readonly child: ChildProcess,
    readonly port: number,
    readonly logPath: string,
  ) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  log(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, 'utf8') : '';
  }

  /** SIGTERM (a graceful stop), then SIGKILL if it is still running after 30 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  }
}

/**
 * Runs `<repo>/.venv/bin/<binary> --host 127.0.0.1 --port 0 --port-file ... --exit-with-parent
 * ...args` and resolves once it is SERVING. The log goes to a file in `workDir`.
 */
export async function startServer(
  binary: 'nachbar-db' | 'nachbar-ai',
  args: string[],
  workDir: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
): Promise<ServerProcess> {
  const executable = path.join(BIN_DIR, binary);
  if (!existsSync(executable)) {
    throw new Error(`${executable} not found: run scripts/install.sh at the repo root (or set NACHBAR_BIN_DIR)`);
  }
  // A fresh name per start: a restarted server must not be mistaken for the one before.
  const stem = path.join(workDir, `${binary}-${++starts}`);
  const portFile = `${stem}.port`;
  const logPath = `${stem}.log`;
  const logFd = openSync(logPath, 'w');
  const child = spawn(
    executable,
    ['--host', '127.0.0.1', '--port', '0', '--port-file', portFile, '--exit-with-parent', ...args],
    { stdio: ['ignore', logFd, logFd], env: { ...process.env, HF_HUB_OFFLINE: '1' } },
  );
  closeSync(logFd);
  const deadline = Date.now() + START_TIMEOUT_MS;
  const failure = (why: string): Error => {
    child.kill('SIGKILL');
    return new Error(`${binary} ${why}; its log:\n${readFileSync(logPath, 'utf8')}`);
  };
  while (!existsSync(portFile)) {
    if (child.exitCode !== null) throw failure(`exited with code ${child.exitCode}`);
    if (Date.now() > deadline) throw failure('wrote no port file');
    await sleep(50);
  }
  const server = new ServerProcess(child, Number(readFileSync(portFile, 'utf8').trim()), logPath);
  const health = healthClient(server.address, credentials);
  try {
    let status = '';
    while ((status = await checkHealth(health)) !== 'SERVING') {
      if (child.exitCode !== null) throw failure(`exited with code ${child.exitCode}`);
      if (Date.now() > deadline) throw failure(`is not SERVING (last health status: ${status})`);
      await sleep(100);
    }
  } finally {
    health.close();
  }
  return server;
}

/** A fresh temporary directory, and a function that removes it. */
export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
