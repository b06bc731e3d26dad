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

  constructor(
    readonly address: string,
    options: ClientOptions,
  ) {
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.apiKey = (options.apiKey ?? process.env['NACHBAR_API_KEY'] ?? '').trim();
    const channelOptions: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      ...options.channelOptions,
    };
    const receive = Number(channelOptions['grpc.max_receive_message_length']);
    this.maxReceiveBytes = Number.isInteger(receive) && receive > 0 ? receive : 0;
    this.client = new grpc.Client(address, channelCredentials(options), channelOptions);
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
