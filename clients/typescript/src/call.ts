// One channel per client and one way to run a unary call: with a deadline, cancellable, and
// failing with a typed NachbarError.

import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { DEFAULTS } from './defaults';
import { CancelledError, InvalidArgumentError, errorFromStatus } from './errors';
import type { CallOptions } from './types';

export const DEFAULT_TIMEOUT_MS = DEFAULTS.timeout_seconds * 1000;
/** The servers' default --max-message-bytes; grpc-js alone would refuse replies over 4 MiB. */
export const MAX_MESSAGE_BYTES = DEFAULTS.max_message_bytes;

export interface ClientOptions {
  /** Deadline of every call unless the call sets its own; milliseconds, default 30 000. */
  timeoutMs?: number;
  /**
   * API key sent as `authorization: Bearer <key>` on every call; default: the environment's
   * NACHBAR_API_KEY. An empty string sends none.
   */
  apiKey?: string;
  /** Connect over TLS, trusting this CA: a PEM file path, or its contents as a Buffer. */
  tlsCa?: string | Buffer;
  /** Client certificate and key (PEM path or contents) for servers that require mutual TLS. */
  tlsClientCert?: string | Buffer;
  tlsClientKey?: string | Buffer;
  /** Connect over TLS with the system's CAs (implied by tlsCa / tlsClientCert). */
  tls?: boolean;
  /** Channel credentials of your own; overrides the TLS options above. Default: plaintext. */
  credentials?: grpc.ChannelCredentials;
  /** Extra grpc-js channel options; they override the message size limits set here. */
  channelOptions?: grpc.ChannelOptions;
}

/** The parts of a proto-loader method definition a unary call needs. */
export interface UnaryMethod<Req, Res> {
  path: string;
  requestSerialize: (request: Req) => Buffer;
  responseDeserialize: (bytes: Buffer) => Res;
}

function pem(value: string | Buffer | undefined, option: string): Buffer | null {
  if (value === undefined) return null;
  if (Buffer.isBuffer(value)) return value;
  try {
    return readFileSync(value);
  } catch (error) {
    throw new InvalidArgumentError(`${option} ${value}: cannot read it (${(error as Error).message})`);
  }
}

/** Channel credentials from the TLS options: plaintext unless one of them is set. */
export function channelCredentials(options: ClientOptions): grpc.ChannelCredentials {
  if (options.credentials) return options.credentials;
  const { tlsCa, tlsClientCert, tlsClientKey } = options;
  if ((tlsClientCert === undefined) !== (tlsClientKey === undefined)) {
    throw new InvalidArgumentError('tlsClientCert and tlsClientKey go together; pass both');
  }
  if (!options.tls && tlsCa === undefined && tlsClientCert === undefined) {
    return grpc.credentials.createInsecure();
  }
  return grpc.credentials.createSsl(
    pem(tlsCa, 'tlsCa'),
    pem(tlsClientKey, 'tlsClientKey'),
    pem(tlsClientCert, 'tlsClientCert'),
  );
}

/** Calls whose repetition leaves the same state (Upsert replaces by id): retried on UNAVAILABLE. */
export const IDEMPOTENT_METHODS: Record<string, readonly string[]> = {
  'nachbar.db.v1.DBService': ['ListStores', 'GetStore', 'Upsert', 'GetKey', 'GetByPredicate', 'GetSimN', 'Info', 'Ping'],
  'nachbar.ai.v1.AIService': [
    'ListStores',
    'GetStore',
    'Upsert',
    'GetSimN',
    'GetKey',
    'GetByPredicate',
    'Embed',
    'Rerank',
    'ListModels',
    'Info',
    'Ping',
  ],
};

/** gRPC's service config: retries with backoff for idempotent calls, round-robin when balancing. */
export function serviceConfig(service: string, balance: boolean): string {
  const config: Record<string, unknown> = {
    methodConfig: [
      {
        name: (IDEMPOTENT_METHODS[service] ?? []).map((method) => ({ service, method })),
        retryPolicy: {
          maxAttempts: 5,
          initialBackoff: '0.05s',
          maxBackoff: '1s',
          backoffMultiplier: 2,
          retryableStatusCodes: ['UNAVAILABLE'],
        },
      },
    ],
  };
  if (balance) config['loadBalancingConfig'] = [{ round_robin: {} }];
  return JSON.stringify(config);
}

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/**
 * The gRPC target for an address: one server ("host:port"), several replicas ("ip1:port,ip2:port"
 * or an array; grpc-js balances over IP literals only, so name them through a `dns:///name:port`
 * target instead), or any target with a scheme ("dns:///nachbar-ai:1370", "ipv4:...").
 */
export function channelTarget(address: string | readonly string[]): { target: string; balance: boolean } {
  if (typeof address === 'string' && (address.includes('://') || /^(dns|ipv4|ipv6|unix):/.test(address))) {
    return { target: address, balance: true };
  }
  const parts = (typeof address === 'string' ? address.split(',') : [...address]).map((part) => part.trim()).filter(Boolean);
  if (parts.length === 0) throw new InvalidArgumentError(`no server address in ${JSON.stringify(address)}; give host:port`);
  if (parts.length === 1) return { target: parts[0] as string, balance: false };
  const hosts = parts.map((part) => {
    const colon = part.lastIndexOf(':');
    const host = part.slice(0, colon).replace(/^\[|\]$/g, '');
    const port = part.slice(colon + 1);
    if (colon < 0 || !/^\d+$/.test(port)) throw new InvalidArgumentError(`address ${part} has no port; give host:port`);
    if (host === 'localhost') return { family: 'ipv4', text: `127.0.0.1:${port}` };
    if (IPV4.test(host)) return { family: 'ipv4', text: `${host}:${port}` };
    if (host.includes(':')) return { family: 'ipv6', text: `[${host}]:${port}` };
    throw new InvalidArgumentError(
      `replica address ${part} is a name; list IP addresses or use one dns:///${host}:${port} target, which resolves every address of the name`,
    );
  });
  const family = hosts[0]?.family ?? 'ipv4';
  if (hosts.some((h) => h.family !== family)) {
    throw new InvalidArgumentError(`addresses ${parts.join(',')} mix IPv4 and IPv6; list one family or use a dns:/// name`);
  }
  return { target: `${family}:${hosts.map((h) => h.text).join(',')}`, balance: true };
}

function checkTimeout(timeoutMs: number): number {
  if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new InvalidArgumentError(`timeoutMs must be a positive number of milliseconds, got ${String(timeoutMs)}`);
  }
  return timeoutMs;
}

export class Caller {
  readonly client: grpc.Client;
  readonly timeoutMs: number;
  /** The largest reply this channel accepts; 0: no limit of its own. */
  readonly maxReceiveBytes: number;
  private readonly apiKey: string;
  readonly address: string;

  constructor(address: string | readonly string[], options: ClientOptions, service: string) {
    this.address = typeof address === 'string' ? address : address.join(',');
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.apiKey = (options.apiKey ?? process.env['NACHBAR_API_KEY'] ?? '').trim();
    const { target, balance } = channelTarget(address);
    const channelOptions: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      'grpc.enable_retries': 1,
      'grpc.service_config': serviceConfig(service, balance),
      ...options.channelOptions,
    };
    const receive = Number(channelOptions['grpc.max_receive_message_length']);
    this.maxReceiveBytes = Number.isInteger(receive) && receive > 0 ? receive : 0;
    this.client = new grpc.Client(target, channelCredentials(options), channelOptions);
  }

  unary<Req, Res>(method: UnaryMethod<Req, Res>, request: NoInfer<Req>, options: CallOptions = {}): Promise<Res> {
    const timeoutMs = checkTimeout(options.timeoutMs ?? this.timeoutMs);
    const { signal } = options;
    return new Promise<Res>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new CancelledError(`${method.path} was cancelled before it started`, { method: method.path }));
        return;
      }
      const onAbort = (): void => call.cancel();
      const call = this.client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        request,
        this.metadata(),
        { deadline: Date.now() + timeoutMs },
        (error, response) => {
          signal?.removeEventListener('abort', onAbort);
          if (error) {
            reject(errorFromStatus(error, { method: method.path, address: this.address, cause: error }));
          } else {
            resolve(response as Res);
          }
        },
      );
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.apiKey) metadata.set('authorization', `Bearer ${this.apiKey}`);
    return metadata;
  }

  /** Resolves once the channel is connected; rejects with UnavailableError at the deadline. */
  waitForReady(timeoutMs: number = this.timeoutMs): Promise<void> {
    checkTimeout(timeoutMs);
    return new Promise<void>((resolve, reject) => {
      this.client.waitForReady(Date.now() + timeoutMs, (error) => {
        if (error) {
          reject(errorFromStatus({ code: grpc.status.UNAVAILABLE, details: error.message }, { address: this.address, cause: error }));
        } else {
          resolve();
        }
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
